"""HTTP service over an exported ONNX model: batched predictions, metadata, health and a small web page.

Modules (import what you need; importing this package loads nothing heavy):

* :mod:`transferkit.serve.app` -- ``create_app(engine, spec, ...)``: the FastAPI app and its routes;
* :mod:`transferkit.serve.batching` -- ``MicroBatcher``: concurrent requests' images in one ONNX Runtime call;
* :mod:`transferkit.serve.inputs` -- reading requests within limits, the default limits, and the errors that name
  the fix;
* :mod:`transferkit.serve.multipart` -- multipart bodies parsed as they stream in, within limits;
* :mod:`transferkit.serve.guards` -- admission (503 with Retry-After before a body is read) and the Host check;
* :mod:`transferkit.serve.page` -- the self-contained web page served at ``/``;
* :mod:`transferkit.serve.server` -- preparing a run, splitting the cores, starting uvicorn (``transferkit serve``).
"""

__all__: list[str] = []
