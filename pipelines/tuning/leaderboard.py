"""The leaderboard of a search: rows, aligned text table, CSV/JSON files and a PNG.

Example:
>>> rows = leaderboard_rows(tuner.oracle, hypermodel, project_dir)
>>> print(format_leaderboard(rows, searched_keys(hypermodel), "val_accuracy"))
"""

import csv
import math
import os

from pipelines.tuning.tuners import trial_worker


def leaderboard_rows(oracle, hypermodel, project_dir):
    """One dict per trial, best first: rank, trial, status, score, tuner, settings.

    Completed trials come first, sorted by the objective; failed or unfinished
    ones follow with no rank. Settings are `hypermodel.settings` of the trial
    (width and heads decoded), plus Hyperband's epochs when present.

    Args:
        oracle: the tuner's oracle (`tuner.oracle`).
        hypermodel: the `ViTHyperModel`.
        project_dir: the keras-tuner project folder.

    Returns:
        list of dicts.
    """
    trials = list(oracle.trials.values())
    done = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
    others = [t for t in trials if t not in done]
    done.sort(key=lambda t: t.score, reverse=oracle.objective.direction == "max")
    rows = []
    for rank, trial in enumerate(done + others, start=1):
        values = trial.hyperparameters.values
        row = {"rank": rank if trial in done else None, "trial": trial.trial_id,
               "status": trial.status,
               "score": float(trial.score) if trial.score is not None else None,
               "best_epoch": int(trial.best_step) + 1 if trial in done else None,
               "tuner_id": trial_worker(project_dir, trial.trial_id)}
        row.update(hypermodel.settings(values))
        if "tuner/epochs" in values:
            row["epochs"] = values["tuner/epochs"]
            row["initial_epoch"] = values.get("tuner/initial_epoch", 0)
        rows.append(row)
    return rows


def _format(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def searched_keys(hypermodel):
    """Settings the search varies (width and heads separately), in search order."""
    from keras_vit.tuning import split_width_heads

    pairs = [split_width_heads(p) for p in hypermodel.pairs]
    keys = []
    for key, param in hypermodel.space.items():
        if key in ("hidden_dim", "num_heads"):
            # Searched through the width x heads pairs, not on their own.
            index = 0 if key == "hidden_dim" else 1
            if len({pair[index] for pair in pairs}) > 1:
                keys.append(key)
        elif "value" not in param:
            keys.append(key)
    return keys


def format_leaderboard(rows, keys, objective):
    """The leaderboard as an aligned text table (trial, score, searched settings)."""
    columns = ["rank", "trial", "score", "tuner_id"] + list(keys) + ["status"]
    header = {"score": objective, "tuner_id": "tuner"}
    table = [[header.get(c, c) for c in columns]]
    table += [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()
                     for r in table)


def write_leaderboard(rows, run_dir):
    """`leaderboard.csv` and `leaderboard.json` in `run_dir`; returns their paths."""
    from pipelines.reporting import write_json

    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    csv_path = os.path.join(run_dir, "leaderboard.csv")
    with open(csv_path + ".tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(csv_path + ".tmp", csv_path)
    json_path = os.path.join(run_dir, "leaderboard.json")
    write_json(json_path, rows)
    return csv_path, json_path


def plot_leaderboard(rows, keys, objective, path):
    """PNG of the score of each finished trial against each searched setting.

    Numbers go on a (log, for learning rate and weight decay) axis; categories
    on evenly spaced ticks. Without searched settings: score per trial.
    """
    import matplotlib

    matplotlib.use("Agg")  # No display on training machines.
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["score"] is not None]
    keys = list(keys) or ["trial"]
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows),
                                squeeze=False)
    scores = [r["score"] for r in done]
    for axis, key in zip(axes.flat, keys):
        values = [r.get(key) for r in done]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                          for v in values) and key != "trial":
            axis.scatter(values, scores)
            if key in ("learning_rate", "weight_decay") and min(values) > 0:
                axis.set_xscale("log")
        else:
            labels = sorted({str(v) for v in values})
            axis.scatter([labels.index(str(v)) for v in values], scores)
            axis.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 4 else 0)
        axis.set_xlabel(key)
        axis.set_ylabel(objective)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    figure.suptitle(f"{objective} against the searched hyperparameters ({len(done)} trials)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

