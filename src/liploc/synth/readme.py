"""The README.md written at the root of a ``liploc synth`` output."""

from __future__ import annotations

from liploc.synth.summary import SynthSummary


def readme_text(summary: SynthSummary) -> str:
    """Markdown describing what was generated and how to use it."""
    opts = summary.options
    width, height = summary.image_size
    town = summary.town
    if town["kind"] == "grid":
        where = f"a procedural town of {town['blocks'][0]} x {town['blocks'][1]} blocks"
    else:
        where = f"a procedural town built around the trajectory `{opts['trajectory']}`"
    lines = [
        "# Synthetic KITTI-format drives (liploc synth)",
        "",
        f"{len(summary.sequences)} drives ({summary.frames_total} frames) through {where}, "
        f"town seed {summary.town_seed}, written in the KITTI odometry layout:",
        "",
        "    sequences/NN/image_2/NNNNNN.png   left colour camera",
        "    sequences/NN/velodyne/NNNNNN.bin  float32 x, y, z, intensity (LiDAR frame)",
        "    sequences/NN/calib.txt            P0..P3 and Tr (KITTI sequence 00 calibration)",
        "    sequences/NN/times.txt            10 Hz timestamps",
        "    poses/NN.txt                      camera-0 poses (KITTI format)",
        "    synth.json                        roles, regions, shared streets, seed and options",
        "",
        "## Sensors",
        "",
        f"- Camera: KITTI cam2 intrinsics scaled to {width} x {height} pixels.",
        "- LiDAR: Velodyne HDL-64E model, 64 beams from +2 to -24.9 degrees, "
        f"{summary.lidar_columns} columns, 120 m range, 2 cm range noise, intensity from material and"
        " incidence, mounted 1.73 m above the road.",
        "- Calibration: KITTI's camera-LiDAR extrinsics `Tr`; a scan projected with `P2 @ Tr` lands on"
        " the image.",
        "- Poses: "
        + (
            "all sequences share the town frame (z up, ground at z = 0), so poses of different drives"
            " compare directly; the first pose of a sequence is not the identity."
            if summary.pose_frame == "town"
            else "each sequence starts at the identity, as in KITTI downloads."
        ),
        "",
        "## Sequences",
        "",
        "| sequence | role | region | frames | length (m) | variant | partner | shares streets with |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary.sequences:
        shares = ", ".join(f"{k} ({v:.0%})" for k, v in s.shares_streets_with.items()) or "-"
        lines.append(
            f"| {s.name} | {s.role} | {s.region} | {s.frames} | {s.length_m:.0f} | {s.variant} | "
            f"{s.partner or '-'} | {shares} |"
        )
    lines += [
        "",
        "Roles: `train` drives use only streets of the training region; `test` drives use only streets"
        " of the held-out region (`region: held-out`), which no training drive uses. A drive and its"
        " `partner` cover the same streets (same direction in another lane, or the opposite direction)"
        " with other parked cars and light: map from one, queries from the other.",
        "",
        "## Reproduce",
        "",
        "Same seed and options give byte-identical files on the same machine:",
        "",
        "    liploc synth --out DIR " + _cli_options(opts),
        "",
        "Read it like KITTI: `liploc info DIR`.",
    ]
    for note in summary.notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def _cli_options(opts: dict) -> str:
    parts = [
        f"--town-seed {opts['town_seed']}",
        f"--drives {opts['drives']}",
        f"--frames {opts['frames']}",
        f"--size {opts['size']}",
    ]
    if opts.get("held_out_drives"):
        parts.append(f"--held-out {opts['held_out_drives']}")
    parts.append(f"--pairs {opts['pairs']}")
    if opts.get("trajectory"):
        parts.append(f"--trajectory {opts['trajectory']}")
        if opts.get("trajectory_calib"):
            parts.append(f"--trajectory-calib {opts['trajectory_calib']}")
    else:
        parts.append(f"--blocks {opts['blocks'][0]}x{opts['blocks'][1]} --spacing {opts['frame_spacing_m']}")
    parts.append(f"--pose-frame {opts['pose_frame']}")
    api_only = ("image_scale", "lidar_columns", "supersample")
    if any(opts.get(k) is not None for k in api_only) or not opts["shadows"] or opts["png_compression"] != 1:
        parts.append("(plus the Python-API options recorded in synth.json)")
    return " ".join(parts)
