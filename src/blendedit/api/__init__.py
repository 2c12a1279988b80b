"""``blendedit api``: an HTTP API that OpenAI's image clients speak (``POST /v1/images/edits``) and
a native one with seeds, scores, timings and progress events (``POST /v1/blendedit/edits``).

* :mod:`.jobs`: one edit request as data (:class:`~.jobs.EditJob`), checked from the upload's
  headers before decoding, and run on an editor (:func:`~.jobs.run_job`).
* :mod:`.backend`: where jobs run (:class:`~.backend.Backend`); :class:`~.backend.LocalBackend`
  holds one editor, a bounded queue and one job at a time on the device.
* :mod:`.app`: the FastAPI app over a backend (:func:`~.app.create_app`).
* :mod:`.cli`: the ``blendedit api`` command.
"""
