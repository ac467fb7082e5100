"""After `make up`, clients of the checkout talk to its MLflow server with nothing exported;
progress lines say which model of the run and how long is left."""

from __future__ import annotations

import http.server
import threading

from gap_models.progress import describe_epoch
from tracking import runs


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def test_the_server_make_up_started_is_found_and_a_dead_one_ignored(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COMPARE_HEADS_SERVICES_DIR", str(tmp_path))
    assert runs.tracking_uri().startswith("sqlite:///")  # no server file: the local store
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        (tmp_path / runs.SERVER_URL_FILE).write_text(url + "\n")
        assert runs.tracking_uri() == url
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
        assert runs.tracking_uri() == "sqlite:////tmp/x.db"  # an explicit setting wins
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    finally:
        server.shutdown()
        server.server_close()
    (tmp_path / runs.SERVER_URL_FILE).write_text("http://127.0.0.1:9\n")  # nothing listens
    assert runs.tracking_uri().startswith("sqlite:///")


def test_epoch_lines_say_which_model_and_the_time_left():
    metrics = {"loss": 0.5, "accuracy": 0.7, "val_loss": 0.6, "val_accuracy": 0.68,
               "epoch_seconds": 45.0, "images_per_second": 360.0}  # fmt: skip
    line = describe_epoch("gap seed 0", 2, 7, metrics, (2, 6), [50.0, 45.0])
    assert line.startswith("model 2 of 6, gap seed 0 epoch 2/7: loss 0.5000")
    # 5 epochs left at 45 s; then 4 more models of 7 epochs: 225 s and 1485 s in all
    assert "about 4 min left for this model, 25 min for the run's training" in line
