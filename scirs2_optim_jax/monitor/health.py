"""Health evaluation on the host: named findings from configurable rules, and a status.

Each rule that fires adds a :class:`Finding`; 0 findings is Healthy, 1 or 2 Warning, 3 or more
Critical (the threshold is configurable). The default rules:

======================  ===============================================================
finding                 fires when
======================  ===============================================================
``gradient_explosion``  the latest global gradient norm is above 10
``vanishing_gradient``  the latest global gradient norm is below 1e-6
``high_memory``         memory utilisation (host or device, the fuller) is above 85%
``high_cpu``            CPU utilisation is above 90%
``high_error_rate``     more than 1% of the last 1,000 steps were errors (skipped, or
                        non-finite without a guard)
``loss_stalled``        over the last 200 steps, the mean loss of the newer half improved
                        on the older half by less than 0.1% (relative)
``nonfinite_values``    a step since the previous evaluation saw NaN or infinite values
======================  ===============================================================

Every threshold is a field of :class:`HealthRules`; None switches a rule off.
"""

from __future__ import annotations

import enum
import math
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from scirs2_optim_jax.monitor.record import StepRecord
from scirs2_optim_jax.monitor.resources import ResourceSnapshot
from scirs2_optim_jax.validation import check_int

__all__ = [
    "FINDINGS",
    "Finding",
    "HealthMonitor",
    "HealthReport",
    "HealthRules",
    "HealthStatus",
]

FINDINGS = (
    "gradient_explosion",
    "vanishing_gradient",
    "high_memory",
    "high_cpu",
    "high_error_rate",
    "loss_stalled",
    "nonfinite_values",
)


class HealthStatus(enum.IntEnum):
    """The run's status; the value is what the ``scirs2_health_status`` gauge shows."""

    HEALTHY = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        """Lower-case name: ``healthy``, ``warning`` or ``critical``."""
        return self.name.lower()


def _check_threshold(name: str, value: Any, *, low: float, high: float | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"HealthRules: {name} must be a number or None, got {value!r}")
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(
            f"HealthRules: {name} must be a finite number {bound} or None, got {value}"
        )


@dataclass(frozen=True)
class HealthRules:
    """Thresholds of the health rules; None switches a rule off.

    Attributes:
        max_grad_norm: ``gradient_explosion`` above this global gradient norm.
        min_grad_norm: ``vanishing_gradient`` below this global gradient norm.
        max_memory_utilization: ``high_memory`` above this fraction, in [0, 1].
        max_cpu_utilization: ``high_cpu`` above this fraction, in [0, 1].
        max_error_rate: ``high_error_rate`` above this fraction of the last ``error_window``
            steps, in [0, 1].
        error_window: steps over which the error rate is measured.
        stall_window: steps over which the loss must improve (an even number >= 2); None
            switches ``loss_stalled`` off.
        min_improvement: the least relative improvement, over ``stall_window``, of the
            newer half's mean loss on the older half's.
        nonfinite: whether non-finite values are a finding.
        critical_findings: how many findings make the status Critical (fewer, but at least
            one, make it Warning).

    Example:
        >>> HealthRules(max_grad_norm=100.0, max_cpu_utilization=None).max_grad_norm
        100.0
        >>> HealthRules(max_memory_utilization=1.5)
        Traceback (most recent call last):
        ...
        ValueError: HealthRules: max_memory_utilization must be a finite number in [0.0, 1.0] or None, got 1.5
    """  # noqa: E501

    max_grad_norm: float | None = 10.0
    min_grad_norm: float | None = 1e-6
    max_memory_utilization: float | None = 0.85
    max_cpu_utilization: float | None = 0.90
    max_error_rate: float | None = 0.01
    error_window: int = 1000
    stall_window: int | None = 200
    min_improvement: float = 1e-3
    nonfinite: bool = True
    critical_findings: int = 3

    def __post_init__(self) -> None:
        _check_threshold("max_grad_norm", self.max_grad_norm, low=0.0)
        _check_threshold("min_grad_norm", self.min_grad_norm, low=0.0)
        for name in ("max_memory_utilization", "max_cpu_utilization", "max_error_rate"):
            _check_threshold(name, getattr(self, name), low=0.0, high=1.0)
        check_int("HealthRules", "error_window", self.error_window, 1)
        if self.stall_window is not None:
            check_int("HealthRules", "stall_window", self.stall_window, 2)
            if self.stall_window % 2:
                raise ValueError(
                    f"HealthRules: stall_window must be an even integer >= 2 or None, "
                    f"got {self.stall_window}"
                )
        _check_threshold("min_improvement", self.min_improvement, low=0.0)
        if self.min_improvement is None:
            raise TypeError("HealthRules: min_improvement must be a number, got None")
        if not isinstance(self.nonfinite, bool):
            raise TypeError(f"HealthRules: nonfinite must be a bool, got {self.nonfinite!r}")
        check_int("HealthRules", "critical_findings", self.critical_findings, 1)


@dataclass(frozen=True)
class Finding:
    """One rule that fired: its name, a sentence for people, the value and the threshold."""

    name: str
    message: str
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class HealthReport:
    """The outcome of one evaluation.

    Attributes:
        status: Healthy, Warning or Critical.
        findings: the rules that fired, in the order of :data:`FINDINGS`.
        step: the latest step observed before the evaluation (None before any step).
    """

    status: HealthStatus
    findings: tuple[Finding, ...] = ()
    step: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the findings."""
        return tuple(f.name for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``status`` (its label), ``step`` and ``findings``.

        Example:
            >>> HealthReport(HealthStatus.WARNING, (Finding("high_cpu", "CPU 95%"),)).to_dict()
            {'status': 'warning', 'step': None, 'findings': [{'name': 'high_cpu', 'message': 'CPU 95%', 'value': None, 'threshold': None}]}
        """  # noqa: E501
        findings = []
        for finding in self.findings:
            item = asdict(finding)
            if item["value"] is not None and not math.isfinite(item["value"]):
                item["value"] = str(item["value"])
            findings.append(item)
        return {"status": self.status.label, "step": self.step, "findings": findings}


def status_for(count: int, critical_findings: int = 3) -> HealthStatus:
    """The status for ``count`` findings: 0 Healthy, fewer than ``critical_findings`` Warning.

    Example:
        >>> [status_for(n).label for n in range(4)]
        ['healthy', 'warning', 'warning', 'critical']
    """
    if count <= 0:
        return HealthStatus.HEALTHY
    return HealthStatus.CRITICAL if count >= critical_findings else HealthStatus.WARNING


class HealthMonitor:
    """Keeps the windows the rules need and evaluates them on demand.

    Call :meth:`observe` with every step's record (cheap) and :meth:`evaluate` as often as
    wanted (every few steps, with a fresh :class:`ResourceSnapshot`). :attr:`latest` is the
    latest report; reading it from another thread (the ``/health`` endpoint) is safe.

    Args:
        rules: the thresholds; the defaults of :class:`HealthRules` when None.

    Example:
        >>> from scirs2_optim_jax.monitor.record import StepRecord
        >>> monitor = HealthMonitor(HealthRules(stall_window=None))
        >>> monitor.observe(StepRecord(1, {"loss": 2.0, "grad_norm": 50.0}))
        >>> report = monitor.evaluate()
        >>> report.status.label, report.names
        ('warning', ('gradient_explosion',))
    """

    def __init__(self, rules: HealthRules | None = None) -> None:
        if rules is not None and not isinstance(rules, HealthRules):
            raise TypeError(
                f"HealthMonitor: rules must be a HealthRules or None, got {type(rules).__name__}"
            )
        self.rules = HealthRules() if rules is None else rules
        self._lock = threading.Lock()
        self._errors: deque[bool] = deque(maxlen=self.rules.error_window)
        self._losses: deque[float] = deque(maxlen=self.rules.stall_window or 1)
        self._grad_norm: float | None = None
        self._nonfinite_seen = False
        self._step: int | None = None
        self._latest = HealthReport(HealthStatus.HEALTHY)

    @property
    def latest(self) -> HealthReport:
        """The report of the latest evaluation (Healthy, with no step, before the first)."""
        return self._latest

    def observe(self, record: StepRecord) -> None:
        """Adds one step to the windows."""
        with self._lock:
            self._step = record.step
            self._errors.append(record.error)
            self._nonfinite_seen = self._nonfinite_seen or record.nonfinite
            grad_norm = record.values.get("grad_norm")
            if grad_norm is not None and math.isfinite(grad_norm):
                self._grad_norm = grad_norm
            loss = record.values.get("loss")
            if loss is not None and math.isfinite(loss) and self.rules.stall_window:
                self._losses.append(loss)

    def _loss_finding(self) -> Finding | None:
        window = self.rules.stall_window
        if window is None or len(self._losses) < window:
            return None
        losses = list(self._losses)
        half = window // 2
        older = sum(losses[:half]) / half
        newer = sum(losses[half:]) / half
        improvement = (older - newer) / max(abs(older), 1e-12)
        if improvement >= self.rules.min_improvement:
            return None
        return Finding(
            "loss_stalled",
            f"loss improved by {improvement:.2%} over the last {window} steps "
            f"(mean {older:.4g} -> {newer:.4g}), less than {self.rules.min_improvement:.2%}",
            improvement,
            self.rules.min_improvement,
        )

    def _findings(self, resources: ResourceSnapshot | None) -> list[Finding]:
        rules = self.rules
        found: list[Finding] = []
        norm = self._grad_norm
        if norm is not None and rules.max_grad_norm is not None and norm > rules.max_grad_norm:
            found.append(
                Finding(
                    "gradient_explosion",
                    f"gradient norm {norm:.4g} is above {rules.max_grad_norm:.4g}",
                    norm,
                    rules.max_grad_norm,
                )
            )
        if norm is not None and rules.min_grad_norm is not None and norm < rules.min_grad_norm:
            found.append(
                Finding(
                    "vanishing_gradient",
                    f"gradient norm {norm:.4g} is below {rules.min_grad_norm:.4g}",
                    norm,
                    rules.min_grad_norm,
                )
            )
        if resources is not None:
            memory, limit = resources.memory_utilization, rules.max_memory_utilization
            if limit is not None and memory > limit:
                found.append(
                    Finding(
                        "high_memory", f"memory {memory:.1%} is above {limit:.0%}", memory, limit
                    )
                )
            cpu, limit = resources.cpu_utilization, rules.max_cpu_utilization
            if limit is not None and cpu > limit:
                found.append(Finding("high_cpu", f"CPU {cpu:.1%} is above {limit:.0%}", cpu, limit))
        if rules.max_error_rate is not None and self._errors:
            rate = sum(self._errors) / len(self._errors)
            if rate > rules.max_error_rate:
                found.append(
                    Finding(
                        "high_error_rate",
                        f"{rate:.2%} of the last {len(self._errors)} steps failed "
                        f"(limit {rules.max_error_rate:.2%})",
                        rate,
                        rules.max_error_rate,
                    )
                )
        stalled = self._loss_finding()
        if stalled is not None:
            found.append(stalled)
        if rules.nonfinite and self._nonfinite_seen:
            found.append(
                Finding("nonfinite_values", "NaN or infinite values seen since the last check")
            )
        return found

    def evaluate(self, resources: ResourceSnapshot | None = None) -> HealthReport:
        """Applies the rules to what has been observed (and to ``resources`` when given).

        Args:
            resources: a fresh reading; without one the memory and CPU rules do not fire.

        Returns:
            The new :class:`HealthReport`, also kept as :attr:`latest`.
        """
        if resources is not None and not isinstance(resources, ResourceSnapshot):
            raise TypeError(
                "HealthMonitor.evaluate: resources must be a ResourceSnapshot or None, "
                f"got {type(resources).__name__}"
            )
        with self._lock:
            findings = tuple(self._findings(resources))
            self._nonfinite_seen = False
            report = HealthReport(
                status_for(len(findings), self.rules.critical_findings), findings, self._step
            )
            self._latest = report
        return report
