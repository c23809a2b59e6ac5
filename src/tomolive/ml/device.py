"""Where networks run: the one place that turns a device name into a :class:`torch.device`."""

from __future__ import annotations

import torch

from ..errors import BadInputError


def choose_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``device``.

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"`` or None: CUDA when torch sees a GPU, else CPU; ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"`` as given.

    Raises
    ------
    BadInputError
        ``device`` is not a device name torch knows.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise BadInputError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from err
