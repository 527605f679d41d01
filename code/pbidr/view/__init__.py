"""``pbidr view``: a run, an eval, a batch or a mesh in a local web page under a raking light the user
moves. :mod:`~pbidr.view.sources` resolves what to show, :mod:`~pbidr.view.display` makes the meshes
ready for a browser, :mod:`~pbidr.view.page` is the viser page (the optional extra)."""
