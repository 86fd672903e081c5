"""The pure scaling decision of the elastic SagaHost pool (``coordinator/scaling.py``) and
the ``serve`` flags and variables that set its bounds."""

from __future__ import annotations

import re

import pytest

from coordinator.cli import build_parser, main
from coordinator.client_cli import serve_options as serve_options_of
from coordinator.scaling import ScaleDecider, ScalePolicy
from coordinator.server import PoolConfigError, ServeOptions, check_pool_options, scale_policy


def decider(low: int = 1, high: int = 4, target: float = 10, after: float = 30) -> ScaleDecider:
    return ScaleDecider(ScalePolicy(low, high, target, after))


def test_grows_at_once_to_what_the_load_needs_capped_at_max() -> None:
    scale = decider()
    assert scale.decide(1, 10, 0.0) == 1  # exactly at target: no growth
    assert scale.decide(1, 11, 0.0) == 2
    assert scale.decide(1, 35, 0.0) == 4
    assert scale.decide(2, 1000, 0.0) == 4


def test_never_below_min_nor_above_max() -> None:
    scale = decider(low=2, high=3)
    assert scale.decide(1, 0, 0.0) == 2
    assert scale.decide(5, 0, 0.0) == 3
    assert scale.decide(2, 0, 1000.0) == 2


def test_shrinks_one_host_after_a_quiet_period() -> None:
    scale = decider(after=30)
    assert scale.decide(4, 0, 0.0) == 4
    assert scale.decide(4, 0, 29.9) == 4
    assert scale.decide(4, 0, 30.0) == 3
    # Each further removal waits for a quiet period of its own.
    assert scale.decide(3, 0, 31.0) == 3
    assert scale.decide(3, 0, 60.0) == 2
    assert scale.decide(2, 0, 90.0) == 1
    assert scale.decide(1, 0, 500.0) == 1


def test_a_load_spike_restarts_the_quiet_period() -> None:
    scale = decider(after=30)
    assert scale.decide(3, 0, 0.0) == 3
    assert scale.decide(3, 15, 20.0) == 3  # 15 > 2 hosts * 10 * 0.5: not low
    assert scale.decide(3, 0, 40.0) == 3
    assert scale.decide(3, 0, 69.0) == 3
    assert scale.decide(3, 0, 70.0) == 2


def test_hysteresis_between_growing_and_shrinking() -> None:
    """A load between half the smaller pool's target and the target keeps the size."""
    scale = decider(after=0)
    assert scale.decide(2, 15, 0.0) == 2  # needs 2; 1 host at 50 % would be 5 < 15
    assert scale.decide(2, 15, 100.0) == 2
    assert scale.decide(2, 5, 100.0) == 1
    assert scale.decide(1, 5, 100.0) == 1


def test_a_fixed_pool_never_moves() -> None:
    scale = ScaleDecider(ScalePolicy.fixed(3))
    assert not scale.policy.elastic
    assert [scale.decide(3, load, t) for t, load in enumerate((0, 10_000, 0))] == [3, 3, 3]


@pytest.mark.parametrize(("args", "message"), [
    ((0, 2), "min_hosts must be at least 1, not 0"),
    ((3, 2), "max_hosts (2) must be at least min_hosts (3)"),
    ((1, 2, 0.0), "target_per_host must be above 0, not 0.0"),
    ((1, 2, 5.0, -1.0), "scale_down_after cannot be negative, not -1.0"),
])
def test_bad_bounds_are_refused_with_the_value(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ScalePolicy(*args)  # type: ignore[arg-type]


# -- the serve options that make the policy ------------------------------------------------

def serve_options(*argv: str) -> ServeOptions:
    return serve_options_of(build_parser().parse_args(["serve", *argv]))


def test_bounds_from_flags_else_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SAGARAY_HOSTS", "SAGARAY_MIN_HOSTS", "SAGARAY_MAX_HOSTS",
                 "SAGARAY_TARGET_PER_HOST", "SAGARAY_SCALE_DOWN_AFTER", "SAGARAY_HOST_CPUS"):
        monkeypatch.delenv(name, raising=False)
    assert scale_policy(serve_options("--hosts", "3")) == ScalePolicy.fixed(3)
    elastic = serve_options("--min-hosts", "2", "--max-hosts", "5", "--target-per-host", "7",
                            "--scale-down-after", "9", "--host-cpus", "0.5")
    assert scale_policy(elastic) == ScalePolicy(2, 5, 7.0, 9.0) and elastic.host_cpus == 0.5
    monkeypatch.setenv("SAGARAY_MIN_HOSTS", "2")
    monkeypatch.setenv("SAGARAY_MAX_HOSTS", "4")
    assert scale_policy(serve_options()) == ScalePolicy(2, 4)
    assert scale_policy(serve_options("--max-hosts", "6")) == ScalePolicy(2, 6)


@pytest.mark.parametrize(("argv", "message"), [
    (["--hosts", "2", "--min-hosts", "1"], "--hosts 2 is a fixed pool; it cannot be combined"),
    (["--min-hosts", "0", "--max-hosts", "2"], "--min-hosts must be at least 1, not 0"),
    (["--min-hosts", "3", "--max-hosts", "2"], "--max-hosts 2 is below --min-hosts 3"),
    (["--max-hosts", "2", "--target-per-host", "0"], "--target-per-host cannot be 0.0"),
    (["--host-cpus", "-1"], "--host-cpus cannot be -1.0"),
])
def test_unusable_bounds_are_usage_errors(argv: list[str], message: str,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("SAGARAY_HOSTS", "SAGARAY_MIN_HOSTS", "SAGARAY_MAX_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PoolConfigError, match=re.escape(message)):
        check_pool_options(serve_options(*argv))
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err
