"""Security: nothing unpickles user files and remote code runs only when asked.

- no ``torch.load(`` / ``pickle.load(`` (or dill/cloudpickle/joblib loads, or
  ``weights_only=False``, or ``trust_remote_code=True``) in the tov_datasets and tov_kernels
  sources;
- the trajectory writes only safetensors, JSON and Parquet, and resumes without torch.load;
- ``tov score`` refuses adapters without safetensors weights (peft would unpickle
  adapter_model.bin) without loading them;
- the CLI passes trust_remote_code=False to every from_pretrained unless
  ``--trust-remote-code`` is given.
"""

import re
import shutil

import pytest
import torch
import transformers
from datasets import Dataset

from tests import _cli_fixtures as fx
from tests import tiny
from tov_datasets import cli, models, trajectory

SOURCES = [p for package in ("tov_datasets", "tov_kernels")
           for p in sorted((fx.ROOT / package).rglob("*.py"))]
FORBIDDEN = re.compile(
    r"\btorch\.load\(|\bpickle\.loads?\(|\b(c?pickle|dill|cloudpickle|joblib)\.loads?\(|"
    r"\bUnpickler\(|weights_only\s*=\s*False|trust_remote_code\s*=\s*True|allow_pickle\s*=\s*True"
)


def test_sources_never_unpickle_or_trust_remote_code():
    assert len(SOURCES) > 10
    hits = [f"{p.relative_to(fx.ROOT)}:{i}: {line.strip()}"
            for p in SOURCES for i, line in enumerate(p.read_text().splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert hits == []


@pytest.fixture
def no_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.load({args[:1]}) called")

    monkeypatch.setattr(torch, "load", refuse)


def test_trajectory_files_are_safetensors_json_parquet(tiny_tokenizer, tmp_path, no_torch_load):
    pool = Dataset.from_dict({"text": [r["text"] for r in fx.text_rows(12, 0)]})
    lora = models.default_lora_config("causal_lm", 2, model=tiny.causal_lm(tiny_tokenizer))
    kw = {"n": 4, "base_size": 8, "epochs": 2, "batch_size": 4, "lora": lora,
          "output_dir": tmp_path}
    trajectory.tov_select(tiny.causal_lm(tiny_tokenizer), tiny_tokenizer, pool, pool, **kw)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files if p.name != ".lock"} == {".safetensors", ".json", ".parquet"}
    shutil.rmtree(tmp_path / "epoch_002")  # resuming loads epoch 1's adapters and optimizer
    trajectory.tov_select(tiny.causal_lm(tiny_tokenizer), tiny_tokenizer, pool, pool, **kw)


def test_score_refuses_pickled_adapters(tiny_causal_lm, tmp_path, capsys, no_torch_load):
    inputs = fx.make_inputs(tmp_path / "inputs", 8)
    for name in ("base", "val"):
        tiny_causal_lm.save_pretrained(tmp_path, selected_adapters=[name],
                                       safe_serialization=False)
        assert (tmp_path / name / "adapter_model.bin").is_file()
    code, err = fx.run_cli(["score", "--quiet", "--model", str(inputs["model"]),
                            "--pool", str(inputs["pool"]), "--out", str(tmp_path / "s.parquet"),
                            "--base-adapter", str(tmp_path / "base"),
                            "--val-adapter", str(tmp_path / "val")], capsys)
    assert code == 2 and "has no adapter_model.safetensors" in err


@pytest.mark.parametrize(("flag", "trusted"), [([], False), (["--trust-remote-code"], True)])
def test_cli_trusts_remote_code_only_when_asked(tmp_path, monkeypatch, flag, trusted):
    inputs = fx.make_inputs(tmp_path / "inputs", 8)
    calls = []

    def spy(cls):
        real = cls.from_pretrained.__func__

        def from_pretrained(klass, *args, **kwargs):
            calls.append((klass.__name__, kwargs.get("trust_remote_code", "<absent>")))
            return real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(from_pretrained))

    for cls in (transformers.AutoConfig, transformers.AutoTokenizer,
                transformers.AutoModelForCausalLM, transformers.AutoModelForTokenClassification):
        spy(cls)
    args = cli.build_parser().parse_args(fx.select_argv(inputs, tmp_path / "out", *flag))
    assert args.trust_remote_code is trusted
    cli.load_model(args.model, trust_remote_code=args.trust_remote_code)
    assert {name for name, _ in calls} == {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    assert all(value is trusted for _, value in calls)
