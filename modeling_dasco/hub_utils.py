"""Upload a trained DASCO folder to the Hugging Face Hub.

Not a remote-code module: the modeling and configuration files never import it, so it is not copied into
checkpoints, and it may import huggingface_hub at module level.
"""

import logging
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError


logger = logging.getLogger(__name__)

# Training-state folders that train.py may leave in the output folder (`--checkpointing-steps`). They contain
# optimizer states, not the model, so they stay local, as transformers' Trainer keeps `checkpoint-*` local.
TRAINING_STATE_PATTERNS = ["epoch_*/**", "step_*/**", "best_model/**"]
REQUIRED_FILES = ("config.json", "model.safetensors")


def push_checkpoint(
    folder,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a saved DASCO folder to the Hub repository `repo_id` and return the commit sha.

    Creates the repository when it does not exist, as private when `private=True` (an existing repository
    keeps its visibility). Creates the branch `revision` from `main` when it is given and missing. The
    training-state subfolders `epoch_*`, `step_*` and `best_model` are not uploaded. `token` defaults to the
    token that huggingface_hub finds (`HF_TOKEN` or `hf auth login`), and the endpoint to `HF_ENDPOINT`.
    """
    folder = Path(folder)
    _check_folder(folder)
    if "/" not in repo_id:
        raise ValueError(f"Hub repository id {repo_id!r} is invalid: pass 'namespace/name', e.g. org/dasco-qformer.")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            revision=revision,
            commit_message=commit_message or f"Upload DASCO model from {folder.name}",
            ignore_patterns=TRAINING_STATE_PATTERNS,
        )
    except HfHubHTTPError as error:
        target = f"{repo_id}@{revision}" if revision else repo_id
        message = f"Pushing {folder} to the Hub repository {target} at {api.endpoint} failed: {error}"
        if error.response is not None and error.response.status_code in (401, 403):
            message += "\nSet a token with write access to that namespace: HF_TOKEN, `hf auth login` or token=..."
        raise RuntimeError(message) from error
    logger.info("Pushed %s to %s (commit %s)", folder, repo_id, commit.oid)
    return commit.oid


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"Folder to push {folder} was not found.")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Folder to push {folder} is missing {', '.join(missing)}: save the model there with "
            "`save_pretrained` first."
        )


__all__ = ["push_checkpoint"]
