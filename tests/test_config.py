"""Config: precedence, strict keys and types, layout and Lighthouse rules, round trips."""

import pytest
import yaml

from lhdist.config import Config, config_from_dict, describe_keys, load_config, parse_overrides

BASE = ["--train.steps=10", "--train.stage1_steps=5"]


def write_yaml(tmp_path, mapping) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def test_config_defaults_are_the_tiny_cpu_yaml():
    assert load_config("configs/tiny_cpu.yaml") == load_config()
    cfg = load_config()
    assert (cfg.model.dim, cfg.model.num_layers, cfg.model.num_heads) == (128, 4, 4)
    assert cfg.sparse_layers() == [1, 2] and cfg.parallel.dp_degree == 1


def test_config_precedence_defaults_yaml_cli(tmp_path):
    path = write_yaml(tmp_path, {"optim": {"lr": 1e-3, "warmup_steps": 7}, "train": {"steps": 50}})
    cfg = load_config(path, ["--optim.lr=2e-4", "--train.stage1_steps", "3"])
    assert cfg.optim.lr == 2e-4  # CLI beats YAML
    assert cfg.optim.warmup_steps == 7  # YAML beats default
    assert cfg.train.steps == 50 and cfg.train.stage1_steps == 3
    assert cfg.optim.beta2 == Config().optim.beta2  # default


def test_config_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 3e-4\n")  # PyYAML reads this as a string
    assert load_config(str(path)).optim.lr == 3e-4


def test_config_flavor_fills_dims_unless_set():
    cfg = load_config(
        overrides=[*BASE, "--model.flavor=8b", "--model.num_layers=2", "--train.seq_len=4096"]
    )
    assert (cfg.model.dim, cfg.model.num_heads, cfg.model.num_kv_heads) == (4096, 32, 8)
    assert cfg.model.num_layers == 2 and cfg.lighthouse.full_attn_layers == [0, 1]


@pytest.mark.parametrize(
    "source, key",
    [
        ("cli", "--train.stepz=3"),
        ("cli", "--optimizer.lr=1"),
        ("yaml", {"train": {"stepz": 3}}),
        ("yaml", {"trainer": {"steps": 3}}),
    ],
    ids=["cli-key", "cli-section", "yaml-key", "yaml-section"],
)
def test_config_unknown_key_lists_valid_keys(tmp_path, source, key):
    with pytest.raises(ValueError, match="unknown config") as err:
        if source == "cli":
            load_config(overrides=[key])
        else:
            load_config(write_yaml(tmp_path, key))
    message = str(err.value)
    listed = "train.steps" in message and "train.seq_len" in message
    assert listed or "model, lighthouse" in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--train.steps=abc", "train.steps='abc' must be of type int"),
        ("--train.tensorboard=3", "must be of type bool"),
        ("--lighthouse.full_attn_layers=[0, x]", "full_attn_layers=[0, 'x'] must be list[int]"),
        ("--optim.lr=fast", "must be of type float"),
    ],
    ids=["int", "bool", "list-item", "float"],
)
def test_config_wrong_type_names_key_type_and_valid_keys(override, expected):
    with pytest.raises(ValueError, match="valid keys") as err:
        load_config(overrides=[*BASE, override])
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "overrides, world, expected",
    [
        (
            ["--parallel.cp_degree=2", "--train.seq_len=2050", "--lighthouse.enabled=false"],
            2,
            "train.seq_len=2050 must be divisible by 2*cp_degree=4",
        ),
        (
            [
                "--parallel.cp_degree=3",
                "--parallel.layout=contiguous",
                "--train.seq_len=2048",
                "--lighthouse.enabled=false",
            ],
            3,
            "train.seq_len=2048 must be divisible by cp_degree=3",
        ),
        (
            ["--parallel.cp_degree=2"],
            2,
            "topk=128 gives 1 tiles (topk/128), which must be a multiple of the 4 CP chunks",
        ),
        (
            ["--parallel.cp_degree=2", "--lighthouse.topk=512"],
            2,
            "seq_len=512 gives each of the 1 tiles 32 level-3 windows",
        ),
        (["--train.seq_len=1000"], 1, "positive multiple of pooling_factor**(num_levels-1)=16"),
        (
            ["--parallel.cp_degree=2", "--lighthouse.selection=global", "--train.seq_len=2080"],
            2,
            "520 tokens per chunk must be a multiple of pooling_factor**(num_levels-1)=16",
        ),
        (["--parallel.dp_degree=3"], 2, "3 x parallel.cp_degree=1 = 3 must equal the world size 2"),
        (["--model.num_kv_heads=3"], 1, "num_heads=4 must be divisible by model.num_kv_heads=3"),
        (["--lighthouse.topk=100"], 1, "topk=100 must be a positive multiple of 128"),
        (["--lighthouse.full_attn_layers=[0, 9]"], 1, "outside [0, num_layers=4)"),
        (["--train.stage1_steps=11"], 1, "stage1_steps=11 must be in [0, steps=10]"),
        (["--train.loss_chunk_tokens=0"], 1, "train.loss_chunk_tokens=0 must be >= 1"),
    ],
    ids=[
        "zigzag-2cp",
        "contiguous-3cp",
        "tiles-vs-chunks",
        "tile-too-short",
        "levels",
        "global-chunk-windows",
        "dp-x-cp",
        "gqa",
        "topk",
        "layer-range",
        "stages",
        "loss-chunk",
    ],
)
def test_config_invalid_layout_rejected_with_numbers(overrides, world, expected):
    with pytest.raises(ValueError) as err:
        load_config(overrides=[*BASE, *overrides], world_size=world)
    assert expected in str(err.value)


def test_config_cp_layout_that_fits_is_accepted():
    cfg = load_config(
        overrides=[
            *BASE,
            "--parallel.cp_degree=2",
            "--lighthouse.topk=512",
            "--train.seq_len=8192",
        ],
        world_size=4,
    )
    assert (cfg.parallel.dp_degree, cfg.cp_chunks()) == (2, 4)


def test_config_paper_yaml_resolves_on_8_ranks():
    cfg = load_config("configs/llama_530m_lh-l3p4k1536_cp2dp4.yaml", world_size=8)
    assert (cfg.parallel.dp_degree, cfg.parallel.cp_degree) == (4, 2)
    assert cfg.sparse_layers() == list(range(2, 28))
    assert (cfg.train.stage1_steps, cfg.train.steps, cfg.train.seq_len) == (10000, 16000, 98304)
    with pytest.raises(ValueError, match="must equal the world size 4"):
        load_config("configs/llama_530m_lh-l3p4k1536_cp2dp4.yaml", world_size=4)


def test_config_round_trips_through_yaml_dict():
    cfg = load_config(overrides=[*BASE, "--optim.schedule=linear"])
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_config_overrides_parse_yaml_scalars_and_reject_junk():
    assert parse_overrides(["--a.b=[0, 3]", "--c.d", "true"]) == [("a.b", [0, 3]), ("c.d", True)]
    with pytest.raises(ValueError, match="expected --section.key=value"):
        parse_overrides(["steps=3"])


def test_config_every_field_has_a_docstring():
    lines = describe_keys().splitlines()
    assert len(lines) == sum(len(vars(getattr(Config(), s))) for s in vars(Config()))
    assert all(len(line.split(None, 1)) == 2 for line in lines)


def test_config_never_imports_torch_distributed():
    """config.py imports no torch at module level (only ops/spec.py, lazily, for the Lighthouse
    rules), so loading a config starts no distributed machinery."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    tree = ast.parse(Path("lhdist/config.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(name.startswith("torch") for name in imported), imported
    code = "import sys, lhdist.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "override, words",
    [
        ("--eval.batches=-1", ["eval.batches=-1", ">= 0"]),
        ("--eval.passkey_lengths=[4096]", ["4096", "train.seq_len=2048"]),
        ("--eval.passkey_lengths=[512]", ["512", "Lighthouse cannot select"]),
        ("--eval.passkey_depths=[1.5]", ["passkey_depths", "[0, 1]"]),
        ("--optim.schedule=wsd", ["decay_steps=0"]),
        ("--optim.decay_shape=step", ["decay_shape", "linear"]),
        ("--lighthouse.competition=future", ["competition", "causal"]),
        ("--lighthouse.scatter=max", ["scatter", "mean"]),
        ("--optim.resume_warmup_steps=-5", ["resume_warmup_steps=-5"]),
    ],
)
def test_eval_schedule_and_switch_keys_are_checked(override, words):
    with pytest.raises(ValueError) as e:
        load_config(overrides=[override])
    assert all(w in str(e.value) for w in words), str(e.value)
