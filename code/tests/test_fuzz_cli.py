"""Command-line fuzzing: seeded bad values for every flag of every subcommand and for every conf key
(through --set and through a conf file) end in exit code 2 and one stderr line that names the flag,
key or file at fault; never a traceback, never the work itself.

Each subcommand starts from a command line that is valid (the data is made here, tiny), so a bad
value that slipped through validation would run the stage (exit 0) or fail later with a line that
does not name it: both fail the test. Nothing is mocked.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
import traceback

import numpy as np
import pytest
from PIL import Image

from pbidr.commands import args as argtypes
from pbidr.commands import main as cli, rig
from pbidr.commands import view as view_args
from pbidr.commands.batch import _stages
from pbidr.commands.bench import VERBS
from pbidr.geometry.cameras import Rig
from pbidr.preprocess.pipeline import preprocess
from pbidr.preprocess.sample import make_sample
from pbidr.training.conf import conf_keys
from pbidr.training.trainer import Trainer

SEED = 16

from conftest import toy_conf  # noqa: E402

TINY = toy_conf(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_cli")
    make_sample(root / "sample", grid=(40, 50), texture_size=64)
    preprocess(root / "sample", root / "scan", Rig(yaw=2, yaw_angle=30, res=24), progress=False)
    (root / "tiny.conf").write_text(TINY)
    Trainer(root / "scan", root / "run", root / "tiny.conf", progress=False).run()
    shutil.copytree(root / "sample", root / "inputs" / "face")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(root / "photo.png")
    (root / "afile").write_text("not a folder\n")
    return root


def _base(world, new) -> dict[str, list[tuple[str, str, str | None]]]:
    """A valid command line per subcommand, as (dest, option, value) entries."""
    w = world
    return {
        "sample": [("output", "-o", new())],
        "preprocess": [("input", "-i", str(w / "sample")), ("output", "-o", new()), ("res", "--res", "16"),
                       ("yaw", "--yaw", "1"), ("quiet", "--quiet", None)],
        "train": [("data", "-i", str(w / "scan")), ("exp_dir", "-o", new()), ("conf", "--conf", str(w / "tiny.conf")),
                  ("device", "--device", "cpu"), ("quiet", "--quiet", None)],
        "eval": [("exp_dir", "-i", str(w / "run")), ("mc_resolution", "--mc-resolution", "8"),
                 ("no_rendering", "--no-rendering", None), ("device", "--device", "cpu"), ("quiet", "--quiet", None)],
        "score": [("mesh", "-i", str(w / "sample" / "gt_detailed.obj")), ("sample", "--sample", str(w / "sample"))],
        "photo": [("image", "-i", str(w / "photo.png")), ("output", "-o", new())],
        "batch": [("inputs", "-i", str(w / "inputs")), ("out", "-o", new()), ("conf", "--conf", str(w / "tiny.conf")),
                  ("stages", "--stages", "preprocess"), ("res", "--res", "16"), ("yaw", "--yaw", "1"),
                  ("quiet", "--quiet", None)],
        "bench all": [("json", "--json", new() + ".json"), ("quiet", "--quiet", None), ("device", "--device", "cpu")],
        "bench render": [("res", "--res", "16"), ("views", "--views", "1"), ("repeat", "--repeat", "1"),
                         ("workdir", "--workdir", new()), ("device", "--device", "cpu")],
        "bench quality": [("out", "-o", new()), ("seeds", "--seeds", "0"), ("iters", "--iters", "1"),
                          ("res", "--res", "16"), ("device", "--device", "cpu")],
        "bench texel": [("out", "-o", new()), ("seeds", "--seeds", "0"), ("levers", "--levers", "none"),
                        ("device", "--device", "cpu")],
        "bench matrix": [("out", "-o", new()), ("presets", "--presets", "classic"), ("seeds", "--seeds", "0"),
                         ("no_oracle", "--no-oracle", None), ("device", "--device", "cpu")],
        "bench batch": [("workdir", "--workdir", new()), ("subjects", "--subjects", "1"), ("json", "--json", new()),
                        ("progress", "--quiet", None), ("device", "--device", "cpu")],
        # view: a valid command line serves until stopped; every case below must fail before it serves
        "view": [("input", "-i", str(w / "sample" / "mesh.obj")), ("port", "--port", "0")],
    }


def _garbage(rng: random.Random) -> str:
    """A token that is no number, path, device or choice (always holds a letter and a symbol)."""
    return rng.choice("qxz") + "".join(rng.choice("abc[]{}$=,:;#%&") for _ in range(rng.randint(1, 6)))


def _typed_bad(action: argparse.Action, rng: random.Random) -> list[str]:
    t = action.type
    g = _garbage(rng)
    if action.choices is not None:
        return [g, "".join(rng.sample("abcdefgh", 5))]
    if t is argtypes.positive_int:
        return [g, "0", str(-rng.randint(1, 10**6)), "1.5"]
    if t is argtypes.nonneg_int:
        return [g, str(-rng.randint(1, 10**6)), "2.5"]
    if t in (argtypes.finite_float, rig._angle, rig._margin):
        extra = {rig._angle: ["200", "-1"], rig._margin: ["0.5"]}.get(t, [])
        return [g, "nan", "inf", *extra]
    if t in (argtypes.positive_float,):
        return [g, "0", "-1e-3", "nan"]
    if t in (argtypes.nonneg_float,):
        return [g, "-0.5", "inf"]
    if t is rig._vec3:
        return [g, "1,2", "0,0,nan"]
    if t is argtypes.views_arg:
        return [g, "0", "1,,2", "-3"]
    if t is argtypes.checkpoint_arg:
        return [g, "-1", "last"]
    if t is _stages:
        return [g, "train,foo", ","]
    if t is argtypes.nonneg_int_list:
        return [g, "1,,2", "-1"]
    if t is argtypes.positive_int_list:
        return [g, "0", "5,-2"]
    if t is argtypes.positive_float_list:
        return [g, "0", "1,nan"]
    if t is view_args.port_arg:
        return [g, "-1", "65536", "2.5"]
    return []


def _string_bad(sub: str, dest: str, world, rng: random.Random) -> list[str]:
    """Bad values of the untyped (string) flags: what each one means decides what is wrong for it."""
    missing = str(world / f"missing_{rng.randint(0, 10**6)}")
    afile, folder = str(world / "afile"), str(world)
    bad_conf = world / f"bad_{rng.randint(0, 10**6)}.conf"
    bad_conf.write_text(rng.choice(["train { batch_size = [1, }", "train { iters = -1 }", "nope { a = 1 }",
                                    "model { diffuse_normal = sfd }"]))
    table = {
        "output": [afile], "out": [afile], "exp_dir": [missing] if sub == "eval" else [afile],
        "input": [missing], "inputs": [missing], "data": [missing], "image": [missing], "mesh": [missing],
        "sample": [missing, folder],
        "conf": [missing, str(bad_conf)],
        "device": [rng.choice(["gpu", "cuda:x", "tpu", "cuda:-1"]), "cuda:99"],
        "set": [rng.choice(["x", "=1", "train.iters", "model..x=1", "1train.a=2"]),
                rng.choice(["train.batch_size=[1,", "model.sdf_network.dims=[64,", "train.iters=${x}"]),
                "train.iters=5, train.seed=1"],
        "address": ["127.0.0.1:1"],       # with --engine local
        "host": ["999.1.2.3", "8.8.8.8"],  # no such address; not one of this machine's
        "workdir": [afile],
        "json": [folder],
        "variants": [rng.choice(["ful", "full,nope", ""])],
        "levers": [rng.choice(["nope", "full;nope", "no low-pass"])],
        "reference": [missing, "label=12:x", "label="],
        "preset": [rng.choice(["nope", "paper!", ""])],
        "presets": [rng.choice(["nope", "classic,nope", ","])],
    }
    if sub == "score":
        table["out"] = [folder]           # the score is a JSON file: a folder is the wrong thing
    if dest not in table:
        raise AssertionError(f"pbidr {sub}: no fuzz values for the flag with dest {dest!r}; add them here")
    return table[dest]


def _actions(parser: argparse.ArgumentParser, prefix: str = ""):
    """(subcommand, action) of every flag; a subcommand with verbs of its own (bench) as "bench VERB"."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        if any(isinstance(a, argparse._SubParsersAction) for a in p._actions):
            yield from _actions(p, f"{prefix}{name} ")
            continue
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            yield prefix + name, action


def _argv(sub: str, entries) -> list[str]:
    argv = sub.split()
    for _, opt, value in entries:
        if not opt:
            argv.insert(len(sub.split()), value)  # the positional
        elif value is None:
            argv.append(opt)
        else:
            argv += [opt, value]
    return argv


def _check_one(capsys, argv: list[str], names: list[str], case: str, stats: dict, sub: str = "") -> str:
    t0 = time.perf_counter()
    try:
        code = cli.main(argv)
    except BaseException:  # noqa: BLE001 -- the point of the test
        stats["tracebacks"] += 1
        pytest.fail(f"{case}: {argv} raised:\n{traceback.format_exc()}")
    dt = time.perf_counter() - t0
    out, err = capsys.readouterr()
    line = err.strip()
    assert code != 0, f"{case}: {argv} was accepted (exit {code}); stdout {out[:300]!r}"
    assert code == 2, f"{case}: exit {code}, {line!r}"
    assert "Traceback" not in err and len(line.splitlines()) == 1, f"{case}: {argv}\n{err}"
    assert line.startswith(f"pbidr {sub or argv[0]}: error: "), f"{case}: {line!r}"
    assert any(n and n in line for n in names), f"{case}: {line!r} names none of {names}"
    assert dt < 5.0, f"{case}: {dt:.1f} s: validation must come before any work"
    stats["cases"] += 1
    return line


def test_every_flag_of_every_subcommand(world, tmp_path, capsys):
    rng = random.Random(SEED)
    counter = iter(range(10**6))

    def new() -> str:
        return str(tmp_path / f"new_{next(counter)}")

    stats = {"cases": 0, "tracebacks": 0}
    flags_done: set[tuple[str, str]] = set()
    t_all = time.perf_counter()
    for sub, action in _actions(cli.build_parser()):
        bases = _base(world, new)
        assert sub in bases, f"pbidr {sub}: no valid command line to start from; add one to _base"
        base = bases[sub]
        if action.nargs == 0:  # store_true and friends: a value given to them is the bad input
            opt = rng.choice([o for o in action.option_strings if o.startswith("--")])
            values = [(opt, None, f"{opt}={_garbage(rng)}")]
        else:
            typed = _typed_bad(action, rng)
            bad = typed or _string_bad(sub, action.dest, world, rng)
            opts = action.option_strings or [""]
            values = [(rng.choice(opts), v, None) for v in bad]
        for opt, value, literal in values:
            entries = [e for e in base if e[0] != action.dest]
            if literal is not None:
                argv = _argv(sub, entries) + [literal]
            else:
                argv = _argv(sub, entries + [(action.dest, opt, value)])
            names = [o for o in action.option_strings if o.startswith("--")] + [action.dest, value or "", literal or ""]
            _check_one(capsys, argv, names, f"pbidr {sub} {opt or action.dest} {value!r}", stats, sub)
        flags_done.add((sub, action.dest))
    total = time.perf_counter() - t_all
    print(f"command-line fuzz: {stats['cases']} cases over {len(flags_done)} flags, "
          f"{stats['tracebacks']} tracebacks, {total:.1f} s")
    assert stats["tracebacks"] == 0
    assert len({s for s, _ in flags_done}) == 8 + len(VERBS) and stats["cases"] > 150, stats  # 8: sample .. view
    assert total < 30, total


def _conf_keys():
    return conf_keys()


def _bad_for(key: str, default, rng: random.Random) -> list[tuple[str, bool]]:
    """(bad HOCON value, is it a syntax error) for ``key``, whose default is ``default``."""
    g = rng.choice(["foo", "qq", "none", "x1"])
    if isinstance(default, bool):
        return [(g, False), ("1", False), ("[true]", False)]
    if isinstance(default, str):
        return [(g, False), ("5", False), ("[a]", False)]
    if isinstance(default, list):
        return [("5", False), (f"[{g}]", False), ("[-1]", False), ("[1.5]", False), ("[1,", True)]
    if isinstance(default, int):
        return [(g, False), ("-1", False), ("1.5", False), ("[1]", False), ("true", False)]
    return [(g, False), ("-1.0", False), ("[1.0]", False), ("{a = 1}", False)]


def test_every_conf_key_type_through_set_and_conf_file(world, tmp_path, capsys):
    rng = random.Random(SEED + 1)
    stats = {"cases": 0, "tracebacks": 0}
    t_all = time.perf_counter()
    keys = _conf_keys()
    kinds = set()
    for n, (key, default) in enumerate(keys):
        kinds.add(type(default).__name__)
        choices = _bad_for(key, default, rng)
        for value, syntax in rng.sample(choices, 2):
            base = ["train", "-i", str(world / "scan"), "-o", str(tmp_path / f"run{n}"), "--device", "cpu", "--quiet"]
            # through --set: the line names --set and the key, never the conf file
            line = _check_one(capsys, base + ["--conf", str(world / "tiny.conf"), "--set", f"{key}={value}"],
                              ["--set"], f"--set {key}={value}", stats)
            assert key in line and "tiny.conf" not in line, f"--set {key}={value}: {line!r}"
            # through a conf file: the line names the file (and the key, unless the file does not parse)
            conf = tmp_path / f"k{n}.conf"
            conf.write_text(TINY + f"\n{key} = {value}\n")
            line = _check_one(capsys, base + ["--conf", str(conf)], [str(conf)], f"{conf.name}: {key} = {value}", stats)
            assert syntax or key in line, f"{conf.name}: {key} = {value}: {line!r}"
            assert "--set" not in line
    total = time.perf_counter() - t_all
    print(f"conf fuzz: {stats['cases']} cases over {len(keys)} keys ({sorted(kinds)}), "
          f"{stats['tracebacks']} tracebacks, {total:.1f} s")
    assert kinds == {"int", "float", "bool", "str", "list"}, kinds
    assert stats["tracebacks"] == 0 and stats["cases"] == 4 * len(keys)
    assert total < 30, total
