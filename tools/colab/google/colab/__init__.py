"""A stand-in for Colab's own `google.colab` module (noxfile.py, session `colab`).

Colab's kernel imports `google.colab` at start, which is how each notebook's first cell knows where it
runs. The session imports this one instead; the notebooks use nothing from it.
"""
