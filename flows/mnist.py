"""The `mnist` flow: download -> transform -> train -> evaluate -> export -> promote."""

if __name__ == "__main__":  # a command line: its arguments are read before torch and Prefect are imported
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also from a Python without it
    from launch.cli import run_script

    sys.exit(run_script("train", sys.argv[1:]))

from prefect import flow
from prefect.states import Completed, State

from mnist_core.config import RunParams
from mnist_core.preflight import preflight, training_device
from mnist_core.records import RunResult, Unchanged
from tasks.download import download
from tasks.fingerprint import fingerprint
from tasks.transform import transform

# The stages after the fingerprint (train, evaluate, export, promote) and the checkpoint are imported in the flow,
# once it knows it trains: a run that stops as Unchanged never loads them (docs/performance.md, "Seconds to a
# champion").


@flow(name="mnist", log_prints=True)
def mnist(params: RunParams = RunParams()) -> RunResult | State[Unchanged]:  # noqa: B008 - immutable here
    """Train and evaluate the MLP on MNIST (or Fashion-MNIST), export a run folder with report and model, and
    promote the model to champion if it beats the current one. When nothing changed since the champion (the
    same data, parameters and code), stop before training in the Completed state named 'Unchanged', unless
    `force_retrain`."""
    device = preflight(params)
    corrections = None
    if params.corrections:
        from tasks.corrections import gather

        corrections = gather(params)
    if corrections is not None:  # the older corrections are this run's extra images
        params = params.model_copy(update={"extra_data": corrections.folder})
    downloaded = download(params.dataset, params.data_dir, params.mirror)
    prepared = transform(downloaded, params)
    fingerprinted = fingerprint(downloaded, prepared, params)
    unchanged = fingerprinted.unchanged()
    if unchanged is not None and not params.force_retrain:
        print(unchanged.message)
        return Completed(name="Unchanged", message=unchanged.message, data=unchanged)
    from mnist_core.training.checkpoint import checkpoint_lock, discard_checkpoint
    from tasks.evaluate import evaluate
    from tasks.export import export
    from tasks.promote import promote
    from tasks.train import train

    device = training_device(device)
    with checkpoint_lock(params):
        trained = train(prepared, params, device)
        evaluation = evaluate(trained, prepared, device)
        exported = export(downloaded, prepared, trained, evaluation, params, fingerprinted)
        promotion = promote(exported, prepared, params, device, corrections) if params.promote else None
        # Only a completed run gets here: after a failure the checkpoint stays, for a rerun to resume from.
        discard_checkpoint(params)
    return RunResult(exported=exported, promotion=promotion)
