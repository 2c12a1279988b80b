"""The interactive editor (``blendedit serve``) and session trails (``blendedit replay``).

``session`` and ``canvas`` are pure logic with no web imports; ``settings`` describes the settings
controls and reads their values back; the Gradio user interface over them and the library is
``layout`` (the page), ``handlers`` (what each event does), ``static/`` (the page's script and
style) and ``app`` (:class:`~blendedit.web.app.EditorApp`, tying them); ``cli`` registers the two
commands.
"""
