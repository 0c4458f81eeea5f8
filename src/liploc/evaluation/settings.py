"""What one evaluation is asked to do: :class:`EvaluationSettings`, the protocols and their names.

The settings hold what the caller chose; a field left at None takes the run's ``eval`` setting
when the run is loaded (:meth:`EvaluationSettings.with_run_defaults`). The checks here need no
data and no model, so that a mistyped protocol or range fails before anything is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from liploc.config import Config
from liploc.datasets.sequence_range import SequenceRange
from liploc.errors import ConfigError
from liploc.localization.sequences import SequenceSettings

PROTOCOLS = ("same-sequence", "cross-drive", "revisit")


@dataclass(frozen=True)
class EvaluationSettings:
    """One evaluation: the sequence, the protocol and its options, where to compute and to write.

    Attributes:
        sequence: the query sequence (and the database for same-sequence and revisit); a frame
            range such as ``00[3000:]`` evaluates those frames only; ``8`` names KITTI's ``08``.
        protocol: ``same-sequence``, ``cross-drive`` or ``revisit`` (None: the run's ``eval.protocol``).
        map_sequence: the database sequence for ``cross-drive`` (both must share a world frame).
        thresholds_m: distance thresholds in metres, the headline first (None or empty: the run's).
        ks: the Recall@K reported (None or empty: the run's ``eval.ks``).
        revisit_window_s: revisit: scans within this many seconds of the query leave the database.
        exclude_self: same-sequence: take each query's own scan out of its database (None: the
            run's ``eval.exclude_self``).
        allow_training_data: evaluate even on frames the run trained or validated on.
        layout: the dataset layout (``auto``: detected).
        out_dir: where to write (None: ``<run>/eval/<sequence>-<protocol>``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: embedding batch size (None or 0: the run's ``eval.batch_size``).
        num_examples: example queries in the report (the best, median and worst by top-1 error).
        also_reference_metric: also compute the LIP-Loc reference code's Recall@1 (distance from
            pose columns 1 and 2, see :mod:`liploc.evaluation.reference_metric`), print it beside
            liploc's and store it under ``reference_metric`` in metrics.json.
        seq_len: also evaluate sequence matching over the last ``seq_len`` query images of the drive
            (:mod:`liploc.localization.sequences`); the first images of the drive use what they have.
        odometry: sequence matching knows the distance travelled between query images (simulated
            from the true poses with ``sequence_settings.odometry_noise``); else speed ratios.
        sequence_settings: other sequence-matching settings (``seq_len`` overrides its own); given
            alone, it asks for sequence matching too.
        worlds: sequence -> world-frame id, for the "same world" test of paths between map drives
            (None: the dataset's).
    """

    sequence: str
    protocol: str | None = None
    map_sequence: str | None = None
    thresholds_m: tuple[float, ...] | None = None
    ks: tuple[int, ...] | None = None
    revisit_window_s: float | None = None
    exclude_self: bool | None = None
    allow_training_data: bool = False
    layout: str = "auto"
    out_dir: Path | None = None
    device: str = "auto"
    batch_size: int | None = None
    num_examples: int = 3
    also_reference_metric: bool = False
    seq_len: int | None = None
    odometry: bool = False
    sequence_settings: SequenceSettings | None = None
    worlds: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        # Lists are welcome (the command line gives them); a frozen object keeps tuples.
        for name in ("thresholds_m", "ks"):
            value: Sequence[float] | None = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", Path(self.out_dir))

    def check(self) -> None:
        """Raise a ConfigError for what is wrong before any data or model is read.

        The protocol is checked when given (else once the run's is known), the ranges always.
        """
        if self.protocol is not None:
            check_protocol(self.protocol, self.sequence, self.map_sequence, self.exclude_self)
        self.ranges()

    def ranges(self) -> tuple[SequenceRange, SequenceRange | None]:
        """The query range and the map's (None without ``map_sequence``), names as typed."""
        query = parse_range(self.sequence)
        return query, parse_range(self.map_sequence) if self.map_sequence else None

    def with_run_defaults(self, config: Config) -> EvaluationSettings:
        """These settings with every None (or empty) option taken from the run's ``eval`` settings.

        Raises:
            ConfigError: for the run's protocol, when it does not fit the other settings.
        """
        ev = config.eval
        protocol = self.protocol if self.protocol is not None else ev.protocol
        check_protocol(protocol, self.sequence, self.map_sequence, self.exclude_self)
        exclude_self = self.exclude_self
        if exclude_self is None:
            exclude_self = ev.exclude_self and protocol == "same-sequence"
        return replace(
            self,
            protocol=protocol,
            exclude_self=exclude_self,
            thresholds_m=tuple(self.thresholds_m or ev.thresholds_m),
            ks=tuple(self.ks or ev.ks),
            revisit_window_s=ev.revisit_window_s if self.revisit_window_s is None else self.revisit_window_s,
            batch_size=self.batch_size or ev.batch_size,
        )

    @property
    def sequence_matching(self) -> SequenceSettings | None:
        """The settings of the sequence-matching rows; None when none are asked for."""
        if self.seq_len is None and self.sequence_settings is None:
            return None
        settings = self.sequence_settings or SequenceSettings()
        if self.seq_len is not None:
            settings = settings.model_copy(update={"seq_len": self.seq_len})
        return settings


def check_protocol(protocol: str, sequence: str, map_sequence: str | None, exclude_self: bool | None) -> None:
    """Raise a ConfigError when ``protocol`` is unknown or does not fit the other settings."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "cross-drive" and not map_sequence:
        raise ConfigError("the cross-drive protocol needs --map-sequence (the drive the map comes from)")
    if protocol != "cross-drive" and map_sequence and map_sequence != sequence:
        raise ConfigError(f"--map-sequence is only used by the cross-drive protocol, not by '{protocol}'")
    if exclude_self and protocol != "same-sequence":
        why = (
            "queries and database are different drives"
            if protocol == "cross-drive"
            else ("the revisit window already removes the query's own scan")
        )
        raise ConfigError(f"--exclude-self is for same-sequence evaluation, not '{protocol}' ({why})")


def parse_range(text: str) -> SequenceRange:
    """``00[3000:]`` as a SequenceRange; a ConfigError naming the text otherwise."""
    try:
        return SequenceRange.parse(text)
    except ValueError as err:
        raise ConfigError(f"sequence {err}") from None


def own_scan_in_database(protocol: str, exclude_self: bool) -> bool:
    """Whether the query's own scan can be retrieved (same-sequence without ``exclude_self``)."""
    return protocol == "same-sequence" and not exclude_self


def protocol_label(protocol: str, threshold_m: float, exclude_self: bool) -> str:
    """``same-sequence, 20 m, own scan in database``: what every printed figure is named by."""
    if protocol == "same-sequence":
        own = "own scan removed from database" if exclude_self else "own scan in database"
    elif protocol == "revisit":
        own = "scans within the revisit window removed (own scan too)"
    else:
        own = "database from another drive"
    return f"{protocol}, {threshold_m:g} m, {own}"


def report_title(protocol: str, sequence: str, map_sequence: str | None) -> str:
    """A title in words: what was localized in what."""
    if protocol == "cross-drive":
        return f"Drive {sequence} localized in the LiDAR map of drive {map_sequence}"
    if protocol == "revisit":
        return f"Sequence {sequence}: revisited places found in its own LiDAR scans"
    return f"Sequence {sequence}: camera images localized among its own LiDAR scans"
