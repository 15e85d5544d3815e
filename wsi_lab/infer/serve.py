"""A model endpoint with SageMaker's inference contract, on the standard library's threaded HTTP server
(loopback by default): ``GET /ping`` → 200 once the model is loaded; ``POST /invocations`` with
``image/png`` or ``image/jpeg`` (one tile), ``application/x-tfrecord`` (one or more framed export records:
the answer also echoes each record's ``slide_id``/``x``/``y``/``label`` as ``records``) or ``application/json``
(``{"instances": [H×W×3 arrays of 0–255 values, ...]}``, the TensorFlow-Serving request shape)
→ ``{"predictions": [[p_0, ..., p_k], ...]}``
(class probabilities; a VAE answers its latent means, an attention-MIL model takes bags of feature
vectors). Malformed bodies answer 400 with a message, bodies over ``max_body`` bytes 413 (not read),
tiles of the wrong size 400 or are resized (``resize=True``); the server keeps serving after each."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["ModelServer", "BadRequest", "DEFAULT_MAX_BODY", "MAX_INSTANCES", "TFRECORD_TYPE"]

DEFAULT_MAX_BODY = 6 << 20  # SageMaker's real-time payload limit
MAX_INSTANCES = 256
#: one or more framed TFRecord records of the export schemas (Batch Transform with SplitType TFRecord)
TFRECORD_TYPE = "application/x-tfrecord"


class BadRequest(Exception):
    """A request the endpoint refuses (400 unless ``status`` says otherwise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ModelServer:
    """Serve ``model_or_checkpoint`` on ``host:port`` (port 0: any free port). ``start()`` runs it on a
    background thread, ``serve_forever()`` in the caller's; ``url`` is its address; ``close()`` stops it."""

    def __init__(self, model_or_checkpoint: Any, host: str = "127.0.0.1", port: int = 0,
                 max_body: int = DEFAULT_MAX_BODY, resize: bool = False, device: str | None = None,
                 precision: str = "auto") -> None:
        from wsi_lab.infer._engine import load_model, resolve_device

        if max_body < 1:
            raise InvalidParameterError(f"max_body must be positive, got {max_body!r}")
        self.device, self.precision = resolve_device(device, precision)
        self.lm = load_model(model_or_checkpoint, self.device)
        self.max_body, self.resize = int(max_body), bool(resize)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.httpd = ThreadingHTTPServer((host, int(port)), _handler_for(self))
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}"

    def start(self) -> ModelServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="wsi-lab-model-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- request bodies -> arrays -> predictions ----------------------------------------------------
    def _tile(self, arr: np.ndarray, n: int) -> np.ndarray:
        size = self.lm.input_size
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise BadRequest(f"instance {n}: expected an H×W×3 array, got shape {list(arr.shape)}")
        if size is not None and arr.shape[:2] != (size, size):
            if not self.resize:
                raise BadRequest(f"instance {n}: the model takes {size}×{size} tiles, got {arr.shape[1]}×{arr.shape[0]}"
                                 " (start the server with resize to accept other sizes)")
            from PIL import Image

            arr = np.asarray(Image.fromarray(arr.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR))
        return arr

    def decode_tfrecord(self, body: bytes) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The tiles of a body of framed TFRecord records (``raw`` or ``jpeg`` export schema) and each
        record's ``slide_id``, ``x``, ``y``, ``label`` (echoed so transform outputs join back to rows)."""
        from wsi_lab.data.tfrecord_stream import decode_tile_record, split_records
        from wsi_lab.errors import DataError

        if self.lm.kind == "mil":
            raise BadRequest("an attention-MIL model takes application/json bags of feature vectors, not tiles")
        try:
            tiles = [decode_tile_record(r) for r in split_records(body, "body")]  # as many as max_body holds
        except DataError as exc:
            raise BadRequest(f"body is not {TFRECORD_TYPE} records of the WSI Lab export schemas ({exc})") from exc
        arrs = [self._tile(t.image, n).astype(np.uint8) for n, t in enumerate(tiles)]
        if len({a.shape for a in arrs}) > 1:
            raise BadRequest(f"records hold tiles of different shapes {sorted({a.shape for a in arrs})}")
        return np.stack(arrs), [{"slide_id": t.slide_id, "x": t.x, "y": t.y, "label": t.label} for t in tiles]

    def decode(self, content_type: str, body: bytes) -> np.ndarray | list[np.ndarray]:
        """The batch in a request body: (N, H, W, 3) uint8 tiles (or, for MIL, a list of feature bags)."""
        ctype = content_type.split(";")[0].strip().lower()
        if ctype == TFRECORD_TYPE:
            return self.decode_tfrecord(body)[0]
        if ctype in ("image/png", "image/jpeg"):
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(io.BytesIO(body)) as im:
                    arr = np.asarray(im.convert("RGB"))
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise BadRequest(f"body is not a readable {ctype} image ({exc})") from exc
            if self.lm.kind == "mil":
                raise BadRequest("an attention-MIL model takes application/json bags of feature vectors, not images")
            return self._tile(arr, 0)[None]
        if ctype != "application/json":
            raise BadRequest(f"unsupported Content-Type {ctype!r}; use image/png, image/jpeg, application/json or "
                             f"{TFRECORD_TYPE}", 415)
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise BadRequest(f"body is not valid JSON ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list) or not doc["instances"]:
            raise BadRequest('expected {"instances": [...]} with at least one instance')
        if len(doc["instances"]) > MAX_INSTANCES:
            raise BadRequest(f"at most {MAX_INSTANCES} instances per request, got {len(doc['instances'])}", 413)
        out = []
        for n, inst in enumerate(doc["instances"]):
            try:
                arr = np.asarray(inst, dtype=np.float64)
            except (ValueError, TypeError) as exc:
                raise BadRequest(f"instance {n}: not a numeric array ({exc})") from exc
            if not np.isfinite(arr).all():
                raise BadRequest(f"instance {n}: holds NaN or infinite values")
            if self.lm.kind == "mil":
                if arr.ndim != 2 or arr.shape[1] != getattr(self.lm.model, "in_dim", -1):
                    raise BadRequest(f"instance {n}: expected an N×{getattr(self.lm.model, 'in_dim', '?')} bag of "
                                     f"features, got shape {list(arr.shape)}")
                out.append(arr.astype(np.float32))
                continue
            if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
                raise BadRequest(f"instance {n}: pixel values must lie in 0..255")
            out.append(self._tile(arr, n).astype(np.uint8))
        if self.lm.kind == "mil":
            return out
        shapes = {a.shape for a in out}
        if len(shapes) > 1:
            raise BadRequest(f"instances have different shapes {sorted(map(list, shapes))}")
        return np.stack(out)

    def predict(self, batch: np.ndarray | list[np.ndarray]) -> list[list[float]]:
        """Model outputs for a decoded batch, as plain lists."""
        import torch

        from wsi_lab.infer._engine import autocast

        with self._lock, torch.no_grad(), autocast(self.device, self.precision):
            model: Any = self.lm.model
            if self.lm.kind == "mil":
                return [torch.softmax(model(torch.from_numpy(b).to(self.device))[0].float(), 1)[0].cpu().tolist()
                        for b in batch]
            x = torch.from_numpy(np.array(batch, dtype=np.uint8, order="C")).to(self.device).permute(0, 3, 1, 2).float().div_(255)
            if self.lm.kind == "vae":
                return model.encode(x).float().cpu().tolist()
            return torch.softmax(model(x).float(), 1).cpu().tolist()


def _handler_for(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "wsi-lab-model"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/ping":
                self._send(200, {"status": "ok", "kind": server.lm.kind, "classes": server.lm.classes,
                                 "checkpoint_hash": server.lm.checkpoint_hash})
            else:
                self._send(404, {"error": f"no such path {self.path!r}; use GET /ping or POST /invocations"})

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/invocations":
                self._send(404, {"error": f"no such path {self.path!r}; use POST /invocations"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.close_connection = True
                self._send(411, {"error": "a Content-Length header is required"})
                return
            if length > server.max_body:
                self.close_connection = True  # the body is not read: this connection cannot be reused
                self._send(413, {"error": f"body of {length} bytes is over the limit of {server.max_body} bytes"})
                return
            body = self.rfile.read(length)
            try:
                ctype = self.headers.get("Content-Type", "")
                if ctype.split(";")[0].strip().lower() == TFRECORD_TYPE:  # records: echo where each tile is from
                    tiles, keys = server.decode_tfrecord(body)  # MultiRecord fills MaxPayloadInMB: run in chunks
                    preds = [p for i in range(0, len(tiles), MAX_INSTANCES)
                             for p in server.predict(tiles[i:i + MAX_INSTANCES])]
                    self._send(200, {"predictions": preds, "records": keys})
                else:
                    self._send(200, {"predictions": server.predict(server.decode(ctype, body))})
            except BadRequest as exc:
                self._send(exc.status, {"error": str(exc)})
            except Exception as exc:
                log.exception("invocation failed")
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

    return Handler


def serve(checkpoint: str | os.PathLike, host: str = "127.0.0.1", port: int = 8080, **options: Any) -> None:
    """Serve until interrupted (the ``wsi-lab serve-model`` command)."""
    srv = ModelServer(checkpoint, host, port, **options)
    print(f"serving {checkpoint} ({srv.lm.kind}) at {srv.url}  (GET /ping, POST /invocations)", flush=True)
    try:
        srv.serve_forever()
    finally:
        srv.httpd.server_close()
