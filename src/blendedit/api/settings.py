"""The API server's limits, each a ``blendedit api`` flag made from its description."""

from __future__ import annotations

from dataclasses import dataclass

from blendedit.config import check_settings, setting
from blendedit.io import MAX_PIXELS, MAX_SIDE


@dataclass(frozen=True)
class ApiOptions:
    """Limits of the API server (every one a flag with a safe default) and, not flags, the keys
    and the folder of the ``url`` results."""

    max_upload_mb: float = setting(
        50.0, "largest request body in MiB (the photo and the mask together); larger is refused "
        "with 413 before it is parsed", flag="--max-upload-mb", group="server", low=0,
        high=4096, low_open=True,
    )  # fmt: skip
    max_side: int = setting(
        4096, "longest side of the photo and the mask in px, read from the file's header before "
        "decoding", flag="--max-side", group="server", low=64, high=MAX_SIDE, unit="px",
    )  # fmt: skip
    max_megapixels: float = setting(
        16.0, "most pixels of the photo and the mask, in millions, read from the header",
        flag="--max-megapixels", group="server", low=0.01, high=MAX_PIXELS / 1e6,
    )  # fmt: skip
    max_n: int = setting(
        4, "most images one request may ask for (n)", flag="--max-n", group="server", low=1,
        high=64,
    )  # fmt: skip
    max_queue: int = setting(
        16, "most requests waiting for the device besides the one running; more get 429 with "
        "Retry-After", flag="--max-queue", group="server", low=0, high=1024,
    )  # fmt: skip
    per_key: int = setting(
        2, "most requests one API key (without keys: one client address) may have waiting or "
        "running; more get 429", flag="--per-key", group="server", low=1, high=1024,
    )  # fmt: skip
    max_seconds: float = setting(
        300.0, "time limit of one request on the device, in seconds: a longer edit is stopped "
        "in whatever stage it is in and the device freed", flag="--max-seconds",
        group="server", low=0, high=86400, low_open=True, unit="s",
    )  # fmt: skip
    url_seconds: float = setting(
        3600.0, "how long a result asked for as a url (response_format=url) stays downloadable, "
        "in seconds", flag="--url-seconds", group="server", low=0, high=7 * 86400,
        low_open=True, unit="s",
    )  # fmt: skip
    api_keys: tuple[str, ...] = ()  # empty: no key asked (loopback only)
    results_dir: str | None = None  # the url results' folder; None: a new temporary folder

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    @property
    def max_body(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> ApiOptions:
        return check_settings(self)


__all__ = ["ApiOptions"]
