"""The method API: what a plugin implements (``method``), what it is given (``context``), the
pluggy hooks (``hookspecs``) and how installed methods are found (``registry``)."""
