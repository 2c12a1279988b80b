"""The interactive editor (``blendedit serve``) and session trails (``blendedit replay``).

``session`` is pure logic with no web imports; ``app`` is the Gradio user interface over it and the
library; ``cli`` registers the two commands.
"""
