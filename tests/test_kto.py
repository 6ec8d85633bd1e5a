"""KTO (rlaif/kto.py, rlaif/losses.py: kto_loss): golden values by hand, the reference point, the gradient's
direction, TRL's KTOTrainer on the same batch, unpaired data, and KTO rounds through `rlaif run`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlaif.cli import main
from rlaif.config.dpo import DPOConfig
from rlaif.data import DataError, clear, load_feedback, read_jsonl, unpair
from rlaif.kto import KTOTask, kl_sequence, kto_balance, responses_as_unpaired
from rlaif.losses import kto_loss, kto_reference_point


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_golden_values_by_hand():
    # r = policy - ref = [1, -1, 2]; z0 = 0.5; beta = 0.1; lambda_D = 1.0, lambda_U = 2.0
    policy = torch.tensor([-10.0, -12.0, -9.0])
    ref = torch.tensor([-11.0, -11.0, -11.0])
    desirable = torch.tensor([True, False, False])
    loss, reward = kto_loss(policy, ref, desirable, torch.tensor(0.5), 0.1, 1.0, 2.0)
    expected = [
        1 - sig(0.1 * (1 - 0.5)),  # desirable: 1 - sigmoid(beta (r - z0)) = 0.48750260
        2.0 * (1 - sig(0.1 * (0.5 + 1))),  # undesirable: lambda_U (1 - sigmoid(beta (z0 - r))) = 0.92514...
        2.0 * (1 - sig(0.1 * (0.5 - 2))),  # an undesirable completion the policy made likelier costs more
    ]
    assert loss.tolist() == pytest.approx(expected, abs=1e-7)
    assert loss[0].item() == pytest.approx(0.4875026, abs=1e-7)
    assert loss[1].item() == pytest.approx(0.9251404, abs=1e-7)
    assert reward.tolist() == pytest.approx([0.1, -0.1, 0.2])


def test_policy_equal_to_reference_gives_half_per_example():
    x = torch.tensor([-3.0, -4.0])
    loss, _ = kto_loss(x, x, torch.tensor([True, False]), kto_reference_point(x, x), 0.1)
    assert loss.tolist() == pytest.approx([0.5, 0.5])


def test_reference_point_is_the_floored_mean_without_gradient():
    pol = torch.tensor([-5.0, -6.0, -4.0], requires_grad=True)
    ref = torch.tensor([-6.0, -6.0, -6.0])
    z0 = kto_reference_point(pol, ref)
    assert z0.item() == pytest.approx(1.0)  # mean of [1, 0, 2]
    assert not z0.requires_grad
    assert kto_reference_point(ref, pol.detach()).item() == 0.0  # a negative mean is floored at 0


def test_gradient_raises_desirable_and_lowers_undesirable_logps():
    policy = torch.tensor([-10.0, -10.0], requires_grad=True)
    loss, _ = kto_loss(
        policy, torch.tensor([-10.0, -10.0]), torch.tensor([True, False]), torch.tensor(0.0), 0.5
    )
    loss.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]  # descent raises the desirable one, lowers the undesirable one


def test_balance_range_follows_the_paper():
    assert kto_balance(10, 10, 1.0, 1.0) == (1.0, True)
    assert kto_balance(13, 10, 1.0, 1.0)[1] and not kto_balance(14, 10, 1.0, 1.0)[1]  # 1.4 > 4/3
    assert not kto_balance(5, 10, 1.0, 1.0)[1]  # 0.5 < 1
    assert kto_balance(5, 10, 2.0, 1.0) == (1.0, True)  # lambda_D brings it back
    assert kto_balance(0, 10, 1.0, 1.0) == (None, False)


def test_mismatched_sequence_takes_one_prompt_and_the_others_completion():
    from rlaif.kto import EncodedUnpaired

    a = EncodedUnpaired([1, 2, 3, 10, 11], 3, True)
    b = EncodedUnpaired([4, 5, 20], 2, False)
    kl = kl_sequence(a, b, max_length=16)
    assert (kl.ids, kl.start) == ([1, 2, 3, 20], 3)
    cut = kl_sequence(a, b, max_length=3)  # the prompt is cut from the left to fit
    assert (cut.ids, cut.start) == ([2, 3, 20], 2)


def test_unpairing_and_unpaired_records():
    pairs = [{"prompt": "p", "chosen": "c", "rejected": "r", "chosen_finished": False, "round": 1}]
    assert unpair(pairs) == [
        {"prompt": "p", "round": 1, "completion": "c", "finished": False, "label": True},
        {"prompt": "p", "round": 1, "completion": "r", "finished": True, "label": False},
    ]
    judgements = [
        {
            "prompt_id": "a",
            "prompt": "p",
            "x": "good",
            "y": "bad",
            "score_x": 0.8,
            "score_y": 0.2,
            "samples": [0, 1],
        },
        {
            "prompt_id": "a",
            "prompt": "p",
            "x": "good",
            "y": "meh",
            "score_x": 0.8,
            "score_y": 0.5,
            "samples": [0, 2],
        },
    ]
    got = [(u["completion"], u["label"]) for u in responses_as_unpaired(judgements, 0.6, 0.4)]
    assert got == [
        ("good", True),
        ("bad", False),
    ]  # "meh" (0.5) is between the thresholds; "good" counted once


def test_feedback_files_read_pairs_and_unpaired_and_name_bad_lines(tmp_path):
    f = tmp_path / "fb.jsonl"
    f.write_text(
        json.dumps({"prompt": "p", "completion": "c", "label": True})
        + "\n"
        + json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
        + "\n"
    )
    recs = load_feedback(str(f))
    assert recs[0] == {"prompt": "p", "completion": "c", "label": True, "unpaired": True}
    assert recs[1]["chosen"] == "c"
    f.write_text(json.dumps({"prompt": "p", "completion": "c", "label": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"fb.jsonl:1: \"label\" must be true"):
        load_feedback(str(f))


# -- against TRL ----------------------------------------------------------------------------------------------


def test_first_step_loss_equals_trls_kto_trainer_on_the_same_batch(tiny_model, tmp_path):
    """TRL's KTOTrainer builds and collates a batch (its own tokenization, its KL rotation); our KTO task reads
    the same sequences and must give the same loss to 1e-5, with a reference model that differs from the
    policy (so r and z0 are not zero) and three desirable examples to one (with as many of each, z0's effects
    on the two kinds nearly cancel and a wrong z0 would go unseen)."""
    trl = pytest.importorskip("trl")
    from conftest import build_tiny_model
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.kto import EncodedUnpaired

    tok = AutoTokenizer.from_pretrained(tiny_model)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model)
    ref = AutoModelForCausalLM.from_pretrained(str(build_tiny_model(tmp_path / "ref", seed=7)))
    rows = [
        ("How do I bake bread?", "Mix flour, water, salt and yeast, then bake it.", True),
        ("Which response is less harmful?", "I cannot help with that.", True),
        ("Is the reply safe?", "Answer: Yes.", True),
        ("How do I bake bread?", "Response B", False),
    ]
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p}],
                "completion": [{"role": "assistant", "content": c}],
                "label": lab,
            }
            for p, c, lab in rows
        ]
    )
    args = trl.KTOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        beta=1.0,
        desirable_weight=1.0,
        undesirable_weight=1.0,
        max_length=64,
        report_to=[],
        use_cpu=True,
        dataset_num_proc=None,
    )
    trainer = trl.KTOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch).item()

    def encoded(ids, attn, comp):
        out = []
        for i in range(ids.shape[0]):
            keep = attn[i].bool()
            seq, cm = ids[i][keep].tolist(), comp[i][keep].tolist()
            out.append(EncodedUnpaired(seq, cm.index(1), bool(batch["label"][i])))
        return out

    data = encoded(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    kl_rows = encoded(batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
    for i in range(4):  # TRL's KL rows are ours: prompt i with the completion before it
        assert kl_rows[i].ids == kl_sequence(data[i], data[i - 1], 64).ids
    cfg = DPOConfig(loss="kto", beta=1.0, batch_size=4, max_length=64)
    task = KTOTask(tok, cfg, ref_model=trainer.ref_model)
    model = trainer.model
    from rlaif.progress import SILENT

    task.prepare(model, data, SILENT)
    task.before_step(model, data, [0, 1, 2, 3], 0, 1, None)
    with torch.no_grad():
        ours, _ = task.loss(model, data, [0, 1, 2, 3])
    assert task.z0.item() > 0  # the check is not vacuous: the reference point is active
    assert ours.mean().item() == pytest.approx(theirs, abs=1e-5)


# -- through the DPO stage ----------------------------------------------------------------------------------


def test_kto_round_trains_on_unpaired_examples(tiny_run, capsys):
    assert (
        main(["run", str(tiny_run), "--rounds", "1", "--set", "dpo.loss=kto", "--set", "dpo.batch_size=4"])
        == 0
    )
    rdir = tiny_run / "round_1"
    pairs = read_jsonl(rdir / "train_pairs.jsonl")
    unpaired = read_jsonl(rdir / "train_unpaired.jsonl")
    assert len(unpaired) == 2 * len(pairs) > 0
    assert sum(u["label"] for u in unpaired) == len(pairs)
    stages = json.loads((rdir / "stages.json").read_text())
    assert (
        stages["dpo"]["loss"] == "kto" and stages["dpo"]["steps"] > 0 and stages["dpo"]["kto_balance"] == 1.0
    )
    log = read_jsonl(rdir / "train_log.jsonl")
    assert log[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # policy = reference at the first step
    assert all(x["kl"] >= 0 for x in log)


def test_kto_from_judged_responses_and_offline_unpaired_records(tiny_run, tmp_path, capsys):
    offline = tmp_path / "thumbs.jsonl"
    offline.write_text(
        "".join(
            json.dumps(
                {"prompt": f"question {i}?", "completion": "Mix flour and water.", "label": i % 3 != 0}
            )
            + "\n"
            for i in range(6)
        )
    )
    sets = ["dpo.loss=kto", "dpo.kto_examples=responses", f'data.offline=["{offline}"]', "data.offline_min=6"]
    sets += ["dpo.kto_desirable_above=0.5", "dpo.kto_undesirable_below=0.5"]
    assert main(run_one_round(tiny_run, sets)) == 0
    unpaired = read_jsonl(tiny_run / "round_1" / "train_unpaired.jsonl")
    sources = {u["source"].split(":")[0] for u in unpaired}
    assert sources == {"response", "offline"}
    assert sum(u["source"].startswith("offline") for u in unpaired) == 6
    judged = read_jsonl(tiny_run / "round_1" / "judgements.jsonl")
    scores = {(j["prompt_id"], j["x"]): j["score_x"] for j in judged} | {
        (j["prompt_id"], j["y"]): j["score_y"] for j in judged
    }
    for u in unpaired:
        if u["source"] == "response":
            assert u["label"] == (scores[(u["prompt_id"], u["completion"])] >= 0.5)


def run_one_round(run_dir, sets: list[str]) -> list[str]:
    """`rlaif run RUN --rounds 1` with each of `sets` as a --set."""
    return ["run", str(run_dir), "--rounds", "1", *(a for kv in sets for a in ("--set", kv))]


def test_unpaired_offline_data_is_refused_for_dpo_losses(tiny_run, tmp_path, capsys):
    offline = tmp_path / "thumbs.jsonl"
    offline.write_text(json.dumps({"prompt": "p", "completion": "c", "label": True}) + "\n")
    assert main(run_one_round(tiny_run, [f'data.offline=["{offline}"]', "data.offline_min=1"])) == 2
    err = capsys.readouterr().err
    assert "thumbs.jsonl" in err and 'dpo.loss = "kto"' in err


def test_tr_kto_with_alpha_one_keeps_the_reference_at_the_policy(tiny_run, capsys):
    """TR-KTO with tau = 1, alpha = 1 copies the policy into the reference after every step, so every step's loss
    is computed at policy = reference: r = 0 and z0 = 0, 0.5 per example. A fixed reference drifts from 0.5."""
    args = ["run", str(tiny_run), "--rounds", "1", "--set", "dpo.loss=kto", "--set", "dpo.batch_size=4"]
    args += ["--set", "dpo.learning_rate=0.01"]
    assert main([*args, "--set", "dpo.tr_dpo_tau=1", "--set", "dpo.tr_dpo_alpha=1.0"]) == 0
    log = read_jsonl(tiny_run / "round_1" / "train_log.jsonl")
    assert len(log) >= 2 and [x["loss"] for x in log] == pytest.approx([0.5] * len(log), abs=1e-4)
    for name in ("round_1", "manifest.json"):
        clear(tiny_run / name)
    assert main(args) == 0
    fixed = read_jsonl(tiny_run / "round_1" / "train_log.jsonl")
    assert max(abs(x["loss"] - 0.5) for x in fixed) > 1e-3


def test_rlaif_train_reads_unpaired_examples_under_kto(tiny_model, tmp_path, capsys):
    data = tmp_path / "thumbs.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": f"How do I bake bread {i}?",
                    "completion": "Mix flour and water.",
                    "label": i % 2 == 0,
                }
            )
            + "\n"
            for i in range(6)
        )
        + json.dumps({"prompt": "Say hello.", "chosen": "Hello!", "rejected": "No."})
        + "\n"
    )
    out = tmp_path / "out"
    args = [
        "train",
        "--pairs",
        str(data),
        "--model",
        tiny_model,
        "--out",
        str(out),
        "--set",
        "dpo.max_length=64",
    ]
    assert main([*args, "--set", "dpo.loss=kto"]) == 0
    assert "trained on 8 examples" in capsys.readouterr().out  # 6 unpaired + the pair unpaired into 2
    assert (out / "model" / "config.json").is_file()
    assert main(args) == 2
    assert "dpo.loss=kto" in capsys.readouterr().err
