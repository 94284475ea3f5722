"""The promotion rule, pure: the challenger's score and the champion's (already measured by the caller on the same
test images) in, the decision out. No file, no database, no model: the store records what this decides."""

from dataclasses import dataclass

from mnist_core.records import Promotion, PromotionKind

# Accuracies are counts over the test-set size; this only absorbs float rounding in `challenger - champion`.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class ChampionScore:
    """The current champion as the caller measured it on the challenger's test images: `accuracy` is None when its
    model could not be evaluated (`error` says why), which makes any challenger its replacement."""

    run_id: str
    accuracy: float | None
    error: str | None = None


def decide(
    challenger_accuracy: float,
    champion_accuracy: float | None,
    margin: float,
    force: bool = False,
    champion_run_id: str | None = None,
    measure: str = "test accuracy",
) -> Promotion:
    """The promotion rule: promote if forced, if there is no champion, or if the challenger's test accuracy is
    strictly higher than the champion's and higher by at least `margin` (a fraction: 0.001 = 0.1 points).
    A tie keeps the champion, so retraining with the same result does not churn the pointer."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    challenger = f"{challenger_accuracy:.2%}"

    def make(promoted: bool, kind: PromotionKind, reason: str) -> Promotion:
        return Promotion(
            promoted=promoted,
            kind=kind,
            reason=reason,
            challenger_accuracy=challenger_accuracy,
            champion_accuracy=champion_accuracy,
            champion_run_id=champion_run_id,
            margin=margin,
        )

    if champion_accuracy is None:
        forced = " (promotion was also forced)" if force else ""
        return make(True, "first", f"no champion yet: this run becomes champion with {measure} {challenger}{forced}.")
    champion = f"{champion_accuracy:.2%}"
    difference = challenger_accuracy - champion_accuracy
    figures = (
        f"{measure} {challenger} vs champion {champion_run_id}'s {champion} on the same test images "
        f"(difference {100 * difference:+.2f} points, margin {100 * margin:.2f} points)"
    )
    if force:
        return make(True, "forced", f"promotion forced (force_promote): {figures}.")
    if difference > 0 and difference + TOLERANCE >= margin:
        return make(True, "better", f"promoted: {figures}.")
    return make(False, "kept", f"champion {champion_run_id} stays: {figures}; the run is not better by the margin.")


def judge(
    challenger: float,
    champion: ChampionScore | None,
    margin: float,
    force: bool = False,
    measure: str = "test accuracy",
) -> Promotion:
    """`decide`, with the champion as measured: none yet, unusable (its model could not be evaluated, e.g. its
    folder was deleted: the challenger replaces it), or a score on the challenger's test images."""
    if champion is None:
        return decide(challenger, None, margin, force, measure=measure)
    if champion.accuracy is None:
        promotion = decide(challenger, None, margin, force, measure=measure)
        reason = (
            f"the run replaces an unusable champion ({champion.run_id} could not be evaluated: {champion.error}): "
            f"{measure} {challenger:.2%}."
        )
        return promotion.model_copy(update={"kind": "replaced", "reason": reason})
    return decide(challenger, champion.accuracy, margin, force, champion_run_id=champion.run_id, measure=measure)


def judge_with_corrections(
    challenger_test: float,
    challenger_held: float,
    champion: ChampionScore | None,
    champion_held: float | None,
    tolerance: float,
    force: bool = False,
) -> Promotion:
    """The rule for a run that learnt from corrections: promote if it reads the held-back corrections better than
    the champion does and its test accuracy is not below the champion's by more than `tolerance` (a fraction).
    A tie on the corrections (both read them all, say) leaves the decision to the test set, as for any run. No
    champion, an unusable one, or `force`: as `judge`."""
    if champion is None or champion.accuracy is None or champion_held is None or force:
        return judge(challenger_test, champion, 0.0, force)
    if abs(challenger_held - champion_held) <= TOLERANCE:
        decided = judge(challenger_test, champion, 0.0, force)
        tie = f"held-back corrections {challenger_held:.2%} for both; decided on the test set: "
        return decided.model_copy(update={"reason": tie + decided.reason})
    figures = (
        f"held-back corrections {challenger_held:.2%} vs champion {champion.run_id}'s {champion_held:.2%}; "
        f"test accuracy {challenger_test:.2%} vs {champion.accuracy:.2%} "
        f"(difference {100 * (challenger_test - champion.accuracy):+.2f} points, tolerance {100 * tolerance:.2f})"
    )
    promoted = challenger_held > champion_held and challenger_test + tolerance + TOLERANCE >= champion.accuracy
    reason = f"promoted: {figures}." if promoted else f"champion {champion.run_id} stays: {figures}."
    if not promoted and challenger_held <= champion_held:
        reason = f"champion {champion.run_id} stays: not better on the held-back corrections: {figures}."
    elif not promoted:
        reason = f"champion {champion.run_id} stays: worse on the test set than the tolerance allows: {figures}."
    return Promotion(
        promoted=promoted,
        kind="better" if promoted else "kept",
        reason=reason,
        challenger_accuracy=challenger_test,
        champion_accuracy=champion.accuracy,
        champion_run_id=champion.run_id,
        margin=0.0,
    )
