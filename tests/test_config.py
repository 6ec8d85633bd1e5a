import pytest

from rlaif.config import ConfigError, RunConfig, load_config, parse_override
from tests.conftest import ROOT


def write(tmp_path, text):
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_every_shipped_run_config_loads():
    configs = sorted((ROOT / "runs").glob("*/config.toml"))
    assert configs, "no run configs shipped"
    for path in configs:
        config = load_config(path)
        assert isinstance(config, RunConfig)
        assert (path.parent / config.data.prompts).is_file()


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "seed = 3\n[train]\nbeta = 0.2\n")
    c = load_config(p, ["dpo.epochs=3", "generate.temperature=1", "model.policy=some/model"])
    assert c.seed == 3 and c.dpo.beta == 0.2 and c.dpo.epochs == 3
    assert c.generate.temperature == 1.0 and isinstance(c.generate.temperature, float)
    assert c.model.policy == "some/model"  # not TOML: taken as a bare string
    assert c.judge.constitution == "default"


def test_unknown_key_names_file_and_suggests(tmp_path):
    p = write(tmp_path, "[train]\nbetta = 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "dpo.betta" in msg and "did you mean 'beta'" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(write(tmp_path, "[trian]\nbeta = 1\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("[train]\nbeta = -1\n", "dpo.beta"),
        ("[train]\nepochs = 'two'\n", "dpo.epochs"),
        ("[generate]\nsamples_per_prompt = 1\n", "generate.samples_per_prompt"),
        ("[judge]\nmin_confidence = 1.5\n", "judge.min_confidence"),
        ("[model]\ndevice = 'tpu'\n", "model.device"),
        ("[train]\nlora_target = 'q_proj'\n", "dpo.lora_target"),
        ("[judge]\nrequire_consistent = 1\n", "judge.require_consistent"),
        ("[dpo]\nprinciple_weights = 2\n", "dpo.principle_weights"),
        ("[dpo]\nprinciple_weights = {harmlessness = 0}\n", "dpo.principle_weights.harmlessness"),
        ("[dpo]\nprinciple_weights = {weapons = 'high'}\n", "dpo.principle_weights.weapons"),
        ("[dpo]\nnll_weights = {harmlessness = -1}\n", "dpo.nll_weights.harmlessness"),
        ("[dpo]\nloss = 'kto'\nnll_weights = {harmlessness = 1}\n", "dpo.nll_weights"),
    ],
)
def test_bad_values_name_the_key_and_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.key == key and str(p) in str(e.value)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="toml"):
        load_config(write(tmp_path, "[train\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope")


def test_override_syntax():
    assert parse_override("dpo.beta=0.5") == (["dpo", "beta"], 0.5)
    assert parse_override("judge.calibrate=false") == (["judge", "calibrate"], False)
    # the DPO section's old name is read as its new one
    assert parse_override('train.lora_target=["q_proj"]') == (["dpo", "lora_target"], ["q_proj"])
    with pytest.raises(ConfigError):
        parse_override("dpo.beta")
    with pytest.raises(ConfigError):
        parse_override(".beta=1")


def test_the_dpo_sections_old_name_is_read_and_not_twice(tmp_path):
    c = load_config(
        write(
            tmp_path,
            '[train]\nbeta = 0.3\n[round]\nstages = ["generate", "judge", "preferences", "train", "merge"]\n',
        )
    )
    assert c.dpo.beta == 0.3 and c.round.stages == ["generate", "judge", "preferences", "dpo", "merge"]
    assert load_config(tmp_path, ["train.beta=0.4"]).dpo.beta == 0.4  # an override under the old name too
    with pytest.raises(ConfigError, match=r"keep \[dpo\]"):
        load_config(write(tmp_path, "[train]\nbeta = 0.3\n[dpo]\nbeta = 0.2\n"))
