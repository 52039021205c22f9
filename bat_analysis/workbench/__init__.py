"""``bat review``: a local web application to review a run's gates in the browser.

:mod:`._session` knows the results folder (queue, tubes, re-gating with an edited gate, decisions appended to
the store's corrections log); :mod:`._app` is the guarded Starlette application over it; :mod:`._server`
starts it on 127.0.0.1 with uvicorn. The page's script and style (``static/``) are the package's own: the
application loads nothing from another host.
"""
