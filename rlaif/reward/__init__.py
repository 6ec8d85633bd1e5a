"""Bradley-Terry reward models: a language model's final hidden states read by a linear head, one scalar per
(conversation, response), trained on preference pairs with -log sigmoid(r(x, y_w) - r(x, y_l)) (the reward
model of RLHF, arXiv:2203.02155; its labels may come from people, an AI judge, or both).

The head reads two features of the response: the final hidden state of its last token (the EOS token it ends
on) and the mean of the final hidden states over its tokens. Two ways to train it:

- `frozen`: the body is not trained. Each sequence's features are computed once (and cached on disk), and the
  head is fitted on them by full-batch L-BFGS with an L2 penalty chosen by cross-validation on the training
  pairs: seconds after the features, on a CPU.
- `lora`: LoRA on the body and the head trained together on the shared trainer loop (rlaif/trainer.py).

With `principle_conditioned` (SALMON, arXiv:2310.05910) the principle's text goes into the input as a system
message, so one reward model scores under any principle of the constitution.

A reward model is a folder: `reward.json` (its base model, mode, features, what it was trained on) and
`head.safetensors` (and `adapter/` for lora). The shipped one, `smollm2-135m-harmless` (rlaif/heads/), is a
frozen-body head on the embedded model trained on ../shared/data/hh-harmless-train.jsonl.

    rlaif rm train --pairs ../shared/data/hh-harmless-train.jsonl --model smollm2-135m-instruct --out rm/
    rlaif rm eval --model rm/ --data ../shared/data/hh-harmless-dev.jsonl

The package, one module per part: format (the folder and input format), features, fit (frozen heads),
model (scoring), conditioned (the principle-conditioned model), judge (a reward model as the judge), lora (LoRA
on the body). Import from the module; this file imports nothing, so every part loads on its own.
"""
