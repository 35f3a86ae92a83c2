"""The throughput benchmark's pieces: PIL host augmentation (the naive baseline) and its table."""

import numpy as np
import pytest

from ma2ml_jax.bench import pil_augment, throughput
from ma2ml_jax.spaces import make_pipeline_space


def images(channels=3, n=4):
    return np.random.default_rng(0).integers(0, 256, (n, 8, 10, channels), dtype=np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_pil_policy_with_probability_zero_is_the_identity(channels):
    x = images(channels)
    policy = [[{"op": "Rotate", "prob": 0.0, "magnitude": 9},
               {"op": "Invert", "prob": 0.0, "magnitude": 0}]]
    np.testing.assert_array_equal(pil_augment.apply_policy(x, policy, np.random.default_rng(0)),
                                  x)


@pytest.mark.parametrize("channels", [1, 3])
def test_pil_policy_applies_its_ops_in_order(channels):
    x = images(channels)
    # Invert then Solarize at level 5 (threshold 128): every value >= 128 after inversion flips.
    policy = [[{"op": "Invert", "prob": 1.0, "magnitude": 0},
               {"op": "Solarize", "prob": 1.0, "magnitude": 5}]]
    inv = 255 - x.astype(np.int64)
    want = np.where(inv >= 128, 255 - inv, inv)
    got = pil_augment.apply_policy(x, policy, np.random.default_rng(0))
    assert got.dtype == np.uint8 and got.shape == x.shape
    np.testing.assert_array_equal(got, want)


def test_pil_policy_draws_one_subpolicy_per_image():
    x = images(3, n=64)
    policy = [[{"op": "Invert", "prob": 1.0, "magnitude": 0}] * 2,  # twice: the identity
              [{"op": "Invert", "prob": 1.0, "magnitude": 0},
               {"op": "Posterize", "prob": 0.0, "magnitude": 0}]]
    got = pil_augment.apply_policy(x, policy, np.random.default_rng(1))
    same = (got == x).all(axis=(1, 2, 3))
    inverted = (got == 255 - x).all(axis=(1, 2, 3))
    assert (same | inverted).all() and 10 < same.sum() < 54


def test_table_reports_ratios_to_the_naive_baseline():
    def result(variant, pph, compiles):
        its = [{"pipelines_per_hour": p, "images_per_s": 10.0, "useful_flops_per_s": 2e9,
                "compiles": c} for p, c in zip(pph, compiles)]
        return {"variant": variant, "strategy": variant, "iterations": its,
                "peak_memory_bytes": 2**30}

    text = throughput.table([result("naive", [100, 120], [24, 24]),
                             result("loop", [50, 360], [3, 0]),
                             {"variant": "vmap", "error": "over 60 s"}], peak=1e10)
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in text.splitlines()[2:]}
    assert rows["loop"][:3] == ["50", "360", "3.00"]
    assert rows["loop"][4] == "3 / 0" and rows["loop"][5] == "2.00 (20.0%)"
    assert rows["naive"][2] == "1.00"
    assert rows["vmap"][0] == "over 60 s"


def test_throughput_workload_is_sized_by_the_backend():
    cpu = throughput.parse([], backend="cpu")
    assert (cpu.workload, cpu.pipelines, cpu.variants) == ("default", 8, "naive,loop")
    gpu = throughput.parse([], backend="gpu")
    assert (gpu.workload, gpu.pipelines) == ("cifar", 24)
    assert gpu.variants.split(",") == list(throughput.DEFAULT_VARIANTS)
    # Asked for explicitly, the accelerator workload runs on a CPU, with a word on its cost.
    asked = throughput.parse(["--workload=cifar", "--variants=loop"], backend="cpu")
    assert (asked.workload, asked.pipelines, asked.variants) == ("cifar", 24, "loop")
    said = throughput.describe(asked, "cpu")
    assert "made for an accelerator" in said and "--workload=default" in said
    assert "--quick" in throughput.describe(cpu, "cpu")


def test_throughput_quick_shrinks_the_workload_and_keeps_the_variants():
    args = throughput.parse(["--quick", "--pipelines=8", "--variants=naive,vmap"], backend="cpu")
    assert (args.pipelines, args.iterations, args.cells, args.train_images) == (2, 1, 2, 32)
    assert args.variants == "naive,vmap" and args.workload == "default"
    assert "made for an accelerator" not in throughput.describe(
        throughput.parse(["--quick", "--workload=cifar"], backend="cpu"), "cpu")


@pytest.mark.slow  # two compiles of the default network: ~1-2 minutes on 2 CPU cores
def test_throughput_benchmark_runs(tmp_path):
    out = tmp_path / "t.json"
    throughput.main(["--workload=default", "--variants=naive,loop", "--pipelines=2",
                     "--iterations=2", "--exact_iterations=1", "--epochs=1", f"--json={out}"])
    import json
    results = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert [i["compiles"] for i in results["loop"]["iterations"]][1] == 0
    assert results["naive"]["iterations"][0]["compiles"] >= 2  # every architecture compiles
    assert all(0 <= a <= 1 for r in results.values() for i in r["iterations"]
               for a in i["accuracy"])


def test_evals_to_target_and_quartiles():
    from ma2ml_jax.bench import sample_efficiency as se

    curve = np.asarray([0.1, 0.5, 0.97, 0.985, 1.0])
    assert se.evals_to_target(curve, 0.98) == 4
    assert se.evals_to_target(curve, 1.0) == 5
    assert se.evals_to_target(curve[:3], 0.98) == np.inf
    assert se.quartiles([4, 1, 3, 2]) == (1.0, 2.0, 3.0)
    assert se.quartiles([5, np.inf, np.inf]) == (5.0, np.inf, np.inf)


def test_sample_efficiency_runs_end_to_end(tmp_path, capsys):
    """A tiny run: the table, the plot and the JSON exist and agree; merge reproduces it."""
    import json

    from ma2ml_jax.bench import sample_efficiency as se

    se.main(["--sizes=small", "--algorithms=random,lite", "--seeds=2", "--budget_scale=0.05",
             f"--out={tmp_path}", "--no_timing"])
    out = capsys.readouterr().out
    assert "| small | random |" in out and "| small_noisy | lite |" in out
    assert "| problem | `random` | `lite` |" in out  # the problems x algorithms grid
    record = json.loads((tmp_path / "sample_efficiency.json").read_text())
    s = record["results"]["small"]["random"]
    assert s["budget"] == 24 and len(s["curve_median"]) == 24 and s["seeds"] == 2
    assert np.all(np.diff(s["curve_median"]) >= 0)  # best-so-far never drops
    assert s["evaluated_repeat_fraction"] == 0.0  # repeats are replaced
    assert (tmp_path / "sample_efficiency.png").stat().st_size > 10_000
    merged = tmp_path / "merged"
    se.main([f"--merge={tmp_path / 'sample_efficiency.json'}", f"--out={merged}"])
    assert "| small | lite |" in capsys.readouterr().out
    assert (merged / "sample_efficiency.png").exists()


def test_sample_efficiency_takes_a_tuning_objective_by_name(tmp_path, capsys):
    import json

    from ma2ml_jax.bench import sample_efficiency as se

    se.main(["--suite=tune_a", "--algorithms=local", "--seeds=1", "--first_seed=100",
             "--budget_scale=0.05", "--target=0.005", f"--out={tmp_path}", "--no_timing"])
    record = json.loads((tmp_path / "sample_efficiency.json").read_text())
    s = record["results"]["tune_a"]["local"]
    assert s["budget"] == int(se.TUNING["tune_a"][1] * 0.05) and s["seeds"] == 1
    assert s["threshold"] == 1.0 - 0.005
    assert "| tune_a | local |" in capsys.readouterr().out


def test_cooperative_objective_optimum_and_chain_pairs():
    import jax.numpy as jnp

    from ma2ml_jax.bench.objectives import make_objective

    obj = make_objective({"a": (3, 2), "b": (4,), "c": (2, 2)}, seed=0, chain=True)
    best = {a: jnp.asarray(t)[None] for a, t in obj.targets.items()}
    assert float(obj.true_reward(best)[0]) == 1.0  # the targets are the optimum, normalized
    assert [(p[0], p[2]) for p in obj.pairs] == [(0, 1), (1, 2)]  # consecutive agents only
    # Missing one side of a coupled pair costs more than that decision's own weight.
    ia, da = int(obj.pairs[0][0]), int(obj.pairs[0][1])
    agent = obj.agents[ia]
    wrong = dict(best)
    wrong[agent] = best[agent].at[0, da].set((best[agent][0, da] + 1) % obj.space[agent].sizes[da])
    z = sum(float(np.sum(u)) for u in obj.unary.values()) + float(obj.pair_weights.sum())
    loss = 1.0 - float(obj.true_reward(wrong)[0])
    assert loss > float(obj.unary[agent][da]) / z + 1e-6


def test_the_naive_port_uses_the_masked_networks_depthwise_kernel():
    """The throughput ratios compare evaluation strategies, not kernels: the naive port's
    exactly-shaped network has the depthwise kernel of the masked network of its space kind;
    only the naive_grouped variant uses XLA's grouped convolution."""
    import jax

    from ma2ml_jax import config as config_lib
    from ma2ml_jax import models
    from ma2ml_jax.bench import throughput

    c = config_lib.base_config()
    c.spaces.nas = {"kind": "cell", "num_blocks": 2}
    c.model.cells, c.model.reduction_cells = 2, (2,)
    for kind, spaces_config in (("macro", config_lib.base_config().spaces), ("cell", c.spaces)):
        space = make_pipeline_space(spaces_config)
        arch = space.decode(space.sample(jax.random.key(0), 1), 0)["nas"]
        masked, _ = models.make_network_for(kind, space["nas"], arch, 10, c.model, masked=True)
        port = throughput.port_network(kind, space["nas"], arch, 10, c.model, False)
        assert port.depthwise_impl == masked.depthwise_impl, kind
        grouped = throughput.port_network(kind, space["nas"], arch, 10, c.model, True)
        assert grouped.depthwise_impl == "conv"
    # On CPU the macro networks use the shifted multiply-adds (bench.depthwise).
    macro = make_pipeline_space(config_lib.base_config().spaces)
    arch = macro.decode(macro.sample(jax.random.key(0), 1), 0)["nas"]
    port = throughput.port_network("macro", macro["nas"], arch, 10, c.model, False)
    assert port.depthwise_impl == ("taps" if jax.default_backend() == "cpu" else "conv")


def test_sample_efficiency_quick_runs_one_seed_for_two_iterations(tmp_path, capsys):
    import json

    from ma2ml_jax.bench import sample_efficiency as se

    se.main(["--quick", "--sizes=small,medium", "--noise=none", "--algorithms=random,local",
             "--seeds=10", f"--out={tmp_path}", "--no_timing"])
    assert "2 problems x 2 searchers x 1 seeds: 4 searches of up to 16 evaluations" in (
        capsys.readouterr().out)
    results = json.loads((tmp_path / "sample_efficiency.json").read_text())["results"]
    assert {(s["seeds"], s["budget"]) for per in results.values() for s in per.values()} == {
        (1, 2 * 8)}
