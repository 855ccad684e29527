"""`autocomp report RUN --html`: a self-contained page, checked as text and in a real headless Chromium."""

import base64
import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from autocomp.cli import main
from autocomp.html_report import TEST_COLUMN, build_html, write_html_report
from autocomp.testing.processes import MNIST_SPACE
from autocomp.testing.tiny import write_fake_mnist

CHROMIUM = "/usr/bin/chromium"
NO_CHROMIUM = (f"{CHROMIUM} is missing: the browser test needs Debian's Chromium "
               "(`apt-get update && apt-get install -y chromium`)")

# the generated-MNIST space, fine-tuned 2 epochs so trials have learning curves
SPACE = MNIST_SPACE.replace("latency: {repeats: 20, warmup: 2}",
                            "finetune: {epochs: 2, steps: 2}\nlatency: {repeats: 2, warmup: 1}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real tiny search through the CLI (fake MNIST, fine-tuned 2 epochs so trials have learning curves)."""
    root = tmp_path_factory.mktemp("html")
    write_fake_mnist(root / "data" / "mnist", n_train=300, n_test=80)
    (root / "space.yaml").write_text(SPACE)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["search", str(root / "space.yaml"), "--data-dir", str(root / "data"), "--trials", "6",
                     "--runs-dir", str(root / "runs"), "--name", "demo", "--quiet"]) == 0
    run_dir = root / "runs" / "demo"
    return run_dir, out.getvalue()


@pytest.fixture(scope="module")
def rich_run(run, tmp_path_factory):
    """A copy of the run with everything optional present: measured latency, sensitivity, final.json, and
    hostile names (a run directory and a layer named with markup)."""
    run_dir, _ = run
    copy = tmp_path_factory.mktemp("rich") / 'evil<b>"&run'
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock", "*.pt"))
    pareto = json.loads((copy / "pareto.json").read_text())
    for i, t in enumerate(pareto["trials"]):
        t["latency_measured_ms"] = t["metrics"]["latency_ms"] * (1.1 + 0.05 * i)
        t["policy"]["<script>alert(1)</script>"] = t["policy"]["fc1"]
    pareto["latency_prediction"] = {"points": len(pareto["trials"]), "median_abs_error": 0.1, "max_abs_error": 0.2}
    (copy / "pareto.json").write_text(json.dumps(pareto))
    layers = ["fc1", "fc2", "<img src=x onerror=alert(2)>"]
    (copy / "sensitivity.json").write_text(json.dumps({
        "layers": layers, "metric": "accuracy drop",
        "knobs": {"prune.ratio": {"0.5": [0.01, 0.0, 0.02], "0.9": [0.2, 0.05, float("nan")]},
                  "quantize.bits": [[0.3, 0.1], [0.05, 0.01], [0.2, 0.0]],
                  "broken": "?"}}))
    front = pareto["trials"][0]
    (copy / "final.json").write_text(json.dumps({
        "settings": {"epochs": 3, "iterations": 1},
        "baseline": pareto["baseline"],
        "trials": [{"id": front["id"], "policy": front["policy"], "size_bytes": 1234, "compression_ratio": 9.5,
                    "accuracy": 0.9, "test_accuracy": 0.876543, "search_accuracy": front["metrics"]["accuracy"],
                    "search_test_accuracy": front["test_accuracy"], "artifact": "final/trial.acz",
                    "seconds": 1.5}]}))
    return copy


class _Elements(HTMLParser):
    """Start tags with their attributes, and which front-chart pair (data-pair) each one sits in."""

    def __init__(self):
        super().__init__()
        self.tags, self.pair, self.depth = [], None, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "data-pair" in attrs:
            self.pair, self.depth = attrs["data-pair"], 0
        elif tag == "div" and self.pair is not None:
            self.depth += 1
        self.tags.append((tag, attrs, self.pair))

    def handle_endtag(self, tag):
        if tag == "div" and self.pair is not None:
            if self.depth == 0:
                self.pair = None
            else:
                self.depth -= 1


def parse(text):
    parser = _Elements()
    parser.feed(text)
    return parser.tags


def test_search_writes_the_report_and_says_where(run):
    run_dir, printed = run
    assert f"report: {run_dir / 'report.html'}" in printed
    assert (run_dir / "report.html").is_file()


def test_page_is_self_contained_with_one_hover_target_per_front_point(run):
    run_dir, _ = run
    text = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert "http://" not in text and "https://" not in text
    pareto = json.loads((run_dir / "pareto.json").read_text())
    front = pareto["trials"]
    assert front
    tags = parse(text)
    targets = [a["data-id"] for tag, a, pair in tags
               if tag == "circle" and pair == "0" and "front" in a.get("class", "").split()]
    assert sorted(targets) == sorted(str(t["id"]) for t in front)  # exactly one per front point
    trials = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    plotted = [a["data-id"] for tag, a, pair in tags if tag == "circle" and pair == "0" and "hov" in a.get("class", "")]
    assert len(plotted) == len(trials) - sum(t["status"] != "complete" for t in trials)  # every scored trial
    for t in front:  # the per-layer table of each front point has one row per layer
        card = [i for i, (tag, a, _) in enumerate(tags) if a.get("id") == f"policy-{t['id']}"]
        assert len(card) == 1
        rows = [a["data-layer"] for tag, a, _ in tags[card[0]:] if tag == "tr" and "data-layer" in a]
        assert rows[:len(t["policy"])] == list(t["policy"])
        assert f"trial {t['id']}: val" in text
    data = json.loads(re.search(r'<script type="application/json" id="ac-data">(.*?)</script>', text, re.S)[1])
    assert {str(t["id"]) for t in trials} | {"baseline"} == set(data)
    assert data[str(front[0]["id"])]["policy"][0][0] == "fc1"


def test_validation_on_the_front_test_only_in_its_labelled_column(run, tmp_path):
    run_dir, _ = run
    plain = (run_dir / "report.html").read_text()  # a CLI search never measures the test split
    assert "validation accuracy" in plain and TEST_COLUMN not in plain
    # a Python-API run with test_data measured: the column appears, labelled, with those numbers
    tested = tmp_path / "tested"
    shutil.copytree(run_dir, tested)
    pareto = json.loads((tested / "pareto.json").read_text())
    for i, t in enumerate(pareto["trials"]):
        t["test_accuracy"] = 0.5 + 0.01 * i
    pareto["baseline"]["test_accuracy"] = 0.9
    (tested / "pareto.json").write_text(json.dumps(pareto))
    text = Path(write_html_report(tested)).read_text()
    assert "validation accuracy" in text and text.count(f'<th class="test">{TEST_COLUMN}</th>') == 1
    front = pareto["trials"]
    test_cells = re.findall(r'<td class="test">([^<]*)</td>', text)
    assert test_cells[1:] == [f"{100 * t['test_accuracy']:.2f}%" for t in front]
    data = re.search(r'id="ac-data">(.*?)</script>', text, re.S)[1]
    assert "test" not in data  # tooltips (and the charts) show validation metrics only


def test_sections_follow_the_files(run, rich_run):
    plain = (run[0] / "report.html").read_text()
    assert 'id="curves"' in plain and "polyline" in plain  # fine-tuned trials journal accuracy@N
    for absent in ('id="sensitivity"', 'id="final"', 'id="latency"'):
        assert absent not in plain
    text = build_html(rich_run)
    for present in ('id="sensitivity"', 'id="final"', 'id="latency"', 'id="curves"', 'id="settings"'):
        assert present in text
    assert "Median error 10.0%, max 20.0%" in text
    assert "87.65%" in text  # the finalized test accuracy, in the test column
    assert "Not shown (unreadable format): broken." in text
    assert text.count('class="heat"') >= 4  # two heat maps (div + table each)


def test_every_string_from_the_run_is_escaped(rich_run):
    text = build_html(rich_run)
    assert "<script>alert(1)" not in text and "<img src=x" not in text and 'evil<b>"&run' not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert "evil&lt;b&gt;&quot;&amp;run" in text
    data = re.search(r'id="ac-data">(.*?)</script>', text, re.S)[1]
    assert "<" not in data and "\\u003cscript\\u003e" in data


def test_report_cli_html_and_html_out(run, tmp_path, capsys):
    run_dir, _ = run
    out = tmp_path / "page.html"
    assert main(["report", str(run_dir), "--html-out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(run_dir), "--html"]) == 0
    assert f"wrote {run_dir / 'report.html'}" in capsys.readouterr().out
    assert main(["report", str(run_dir), "--html-out", str(tmp_path)]) == 2  # a directory: one-line error
    assert "is a directory" in capsys.readouterr().err


# --- a language model: the page follows the run's primary metric (perplexity, lower is better) ----------------


class _TinyLM(torch.nn.Module):
    """A causal model over 16 tokens that sees one token back: logits (B, T, V) for token ids (B, T)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.hidden = torch.nn.Embedding(16, 16), torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 16)

    def forward(self, ids):
        return self.head(torch.relu(self.hidden(self.embed(ids))))


def _tokens(n: int, seed: int):
    """Sequences where each token is mostly the previous plus one; (inputs, next tokens)."""
    g = torch.Generator().manual_seed(seed)
    seq = (torch.randint(0, 16, (n, 1), generator=g)
           + (1 + (torch.rand(n, 12, generator=g) < 0.1).long()).cumsum(1)) % 16
    return seq[:, :-1], seq[:, 1:]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A tiny language-model search through the Python API: fine-tuned 2 epochs, the test split measured."""
    import autocomp
    from autocomp.tasks import LanguageModel
    from autocomp.testing.tiny import fast_latency

    torch.manual_seed(0)
    model, data = _TinyLM(), _tokens(96, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(60):
        optimizer.zero_grad()
        LanguageModel().loss(model(data[0]), data[1]).backward()
        optimizer.step()
    space = autocomp.SearchSpace.from_yaml('- name: all\n  layers: ["type:Linear", "type:Embedding"]\n'
                                           "  primitives:\n    quantize: {bits: {choice: [2, 3, 8]}}\n")
    result = autocomp.search(model.eval(), data, space=space, task="language-model", trials=4, train_data=data,
                             finetune=autocomp.FineTuneSpec(epochs=2, batch_size=32), test_data=_tokens(48, seed=1),
                             latency=fast_latency(), runs_dir=tmp_path_factory.mktemp("lm"), name="lm",
                             progress=False)
    return result.run_dir


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_a_language_model_run_shows_perplexity_where_a_classifier_shows_accuracy(lm_run):
    from autocomp.early_stop import curve

    pareto = json.loads((lm_run / "pareto.json").read_text())
    assert pareto["metric"] == "perplexity"
    text = write_html_report(lm_run).read_text()
    assert "validation accuracy" not in text and "val accuracy" not in text and "val acc<" not in text
    head = re.search(r'<table class="front"><thead>(.*?)</thead>', text, re.S)[1]
    assert re.findall(r"<th[^>]*>([^<]*)</th>", head)[:2] == ["trial", "validation perplexity"]
    assert f'<th class="test">{TEST_COLUMN}</th>' in head
    # the test column: the baseline's and each front point's test_perplexity, as numbers (not percentages)
    front = pareto["trials"]
    cells = re.findall(r'<td class="test">([^<]*)</td>', re.search(r'<table class="front">.*?</table>', text,
                                                                   re.S)[0])
    expected = [pareto["baseline"]["test_perplexity"]] + [t["test_perplexity"] for t in front]
    assert len(cells) == len(expected) and not any("%" in c for c in cells)
    assert [_number(c) for c in cells] == pytest.approx(expected, rel=1e-3)
    assert "baseline val perplexity" in text
    assert f"{_number(re.search(r'<b>([^<]*)</b>baseline val perplexity', text)[1]):.4g}" == \
        f"{pareto['baseline']['perplexity']:.4g}"
    # the first scatter plots perplexity against size, its axis saying that lower is better
    first = re.search(r'<div class="pair" data-pair="0">(.*?)</div>', text, re.S)[1]
    assert 'data-x="size_bytes" data-y="perplexity"' in first and "validation perplexity (lower is better)" in first
    # the learning curves come from perplexity@N (the last epoch: the trial's perplexity)
    trials = {t["id"]: t for t in map(json.loads, (lm_run / "trials.jsonl").read_text().splitlines())}
    curves_svg = re.search(r'<svg class="chart curves".*?</svg>', text, re.S)[0]
    assert "validation perplexity (lower is better)" in curves_svg and "%" not in curves_svg
    lines = re.findall(r'<polyline class="hov curve[^"]*" points="([^"]*)" data-id="(\d+)"', curves_svg)
    assert lines and {int(i) for _, i in lines} == {i for i, t in trials.items() if curve(t["metrics"],
                                                                                         "perplexity")}
    values, heights = [], []
    for points, trial_id in lines:
        metrics = trials[int(trial_id)]["metrics"]
        epochs = curve(metrics, "perplexity")
        assert sorted(epochs) == [1]
        ys = [float(p.split(",")[1]) for p in points.split()]
        assert len(ys) == 2  # epoch 1 from the journal, epoch 2 the trial's own score
        values += [epochs[1], metrics["perplexity"]]
        heights += ys
    # higher perplexity sits lower on the chart (larger y pixel): the points were placed by these values
    order = sorted(range(len(values)), key=lambda k: values[k])
    assert [heights[k] for k in order] == sorted(heights, reverse=True)
    data = json.loads(re.search(r'id="ac-data">(.*?)</script>', text, re.S)[1])
    shown = dict(data[str(front[0]["id"])]["metrics"])
    assert _number(shown["val perplexity"]) == pytest.approx(front[0]["metrics"]["perplexity"], rel=1e-3)


def test_a_capped_front_point_and_finalized_language_model_rows(lm_run, tmp_path):
    copy = tmp_path / "lm"
    shutil.copytree(lm_run, copy, ignore=shutil.ignore_patterns(".lock", "*.pt"))
    pareto = json.loads((copy / "pareto.json").read_text())
    point = pareto["trials"][0]
    point["metrics"]["perplexity@capped"] = 123.0  # the capped value a re-scored point keeps: no epoch
    (copy / "pareto.json").write_text(json.dumps(pareto))
    (copy / "final.json").write_text(json.dumps({
        "metric": "perplexity", "settings": {"epochs": 3}, "baseline": pareto["baseline"], "selected": point["id"],
        "trials": [{"id": point["id"], "policy": point["policy"], "size_bytes": 1234, "compression_ratio": 9.5,
                    "perplexity": 2.345678, "search_perplexity": 3.456789, "test_perplexity": 4.567891,
                    "token_accuracy": 0.75, "artifact": "final/trial.acz", "seconds": 1.5}]}))
    text = build_html(copy)
    data = json.loads(re.search(r'id="ac-data">(.*?)</script>', text, re.S)[1])
    assert dict(data[str(point["id"])]["metrics"])["epochs fine-tuned"] == "2"
    final = re.search(r'<section id="final">.*?</section>', text, re.S)[0]
    assert "<th>val perplexity at search</th><th>val perplexity retrained</th>" in final
    assert "<td>3.457</td><td>2.346</td>" in final and '<td class="test">4.568</td>' in final
    assert "accuracy" not in final
# --- a real browser ------------------------------------------------------------------------------------------


class DevTools:
    """A minimal client of Chromium's DevTools protocol over a stdlib websocket (RFC 6455, text frames)."""

    def __init__(self, url: str, timeout: float = 20.0):
        host_port, path = url.removeprefix("ws://").split("/", 1)
        host, port = host_port.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("DevTools closed the handshake")
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id, self.events = 0, []

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            data += chunk
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _message(self) -> dict:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the connection")
            parts.append(payload)
            if b0 & 0x80:
                return json.loads(b"".join(parts))

    def call(self, method: str, **params):
        self.next_id += 1
        self._send_frame(0x1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            message = self._message()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 20.0) -> dict:
        end = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < end:
            message = self._message()
            self.events.append(message)
            if message.get("method") == method:
                return message
        raise TimeoutError(method)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list:
        """Uncaught exceptions, console.error calls and error-level log entries seen so far."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(params["exceptionDetails"])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(params)
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(params["entry"])
        return out


@contextlib.contextmanager
def chromium_page():
    """A headless Chromium with one blank page, driven over DevTools."""
    profile = tempfile.mkdtemp(prefix="autocomp-chromium-")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"  # Chromium writes the port it chose here
        end = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()) and time.monotonic() < end:
            assert proc.poll() is None, "chromium exited at start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages and time.monotonic() < end:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                pages = [p for p in json.load(response) if p.get("type") == "page"]
            time.sleep(0.1)
        client = DevTools(pages[0]["webSocketDebuggerUrl"])
        for domain in ("Runtime", "Log", "Page"):
            client.call(f"{domain}.enable")
        yield client
    finally:
        if client is not None:
            client.sock.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=NO_CHROMIUM)
def test_page_runs_in_chromium_without_errors_and_hover_shows_the_trial(run, rich_run):
    run_dir, _ = run
    front = json.loads((run_dir / "pareto.json").read_text())["trials"]
    rich = write_html_report(rich_run)
    with chromium_page() as page:
        for path, layers in ((run_dir / "report.html", ["fc1"]), (rich, ["<script>alert(1)</script>"])):
            page.call("Page.navigate", url=path.resolve().as_uri())
            page.wait_for("Page.loadEventFired")
            page.events = [e for e in page.events if e.get("method") != "Page.loadEventFired"]
            assert page.evaluate("document.body.dataset.ready") == "1"  # the script ran to its end
            assert page.errors() == []
            assert page.evaluate("window.acErrors.length") == 0
            assert page.evaluate("document.body.dataset.frontPoints") == str(len(front))
            assert int(page.evaluate("document.body.dataset.hoverTargets")) > len(front)
            # a real mouse over the first front point: the tooltip shows its trial id, metrics and policy
            point = page.evaluate("""(() => {
                const c = document.querySelector('#front .pair:not([hidden]) circle.front');
                c.scrollIntoView({block: 'center'});
                const r = c.getBoundingClientRect();
                return {id: c.dataset.id, x: r.x + r.width / 2, y: r.y + r.height / 2};
            })()""")
            page.call("Input.dispatchMouseEvent", type="mouseMoved", x=point["x"], y=point["y"])
            tip = page.evaluate("""(() => {
                const t = document.getElementById('ac-tip');
                return {shown: getComputedStyle(t).display, text: t.textContent, forId: t.dataset.for};
            })()""")
            assert tip["shown"] == "block" and tip["forId"] == point["id"], tip
            assert f"trial {point['id']} · Pareto front" in tip["text"]
            assert "val accuracy" in tip["text"] and "size_bytes" in tip["text"]
            assert all(f"{layer}: " in tip["text"] for layer in layers)  # markup shown as text, never run
            page.call("Input.dispatchMouseEvent", type="mouseMoved", x=2, y=2)
            assert page.evaluate("getComputedStyle(document.getElementById('ac-tip')).display") == "none"
            assert page.evaluate("document.querySelectorAll('img').length") == 0
            assert page.errors() == []


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=NO_CHROMIUM)
def test_language_model_page_runs_in_chromium_and_hover_shows_perplexity(lm_run):
    page_path = write_html_report(lm_run)
    with chromium_page() as page:
        page.call("Page.navigate", url=page_path.resolve().as_uri())
        page.wait_for("Page.loadEventFired")
        assert page.evaluate("document.body.dataset.ready") == "1" and page.errors() == []
        point = page.evaluate("""(() => {
            const c = document.querySelector('#front .pair:not([hidden]) circle.front');
            c.scrollIntoView({block: 'center'});
            const r = c.getBoundingClientRect();
            return {id: c.dataset.id, x: r.x + r.width / 2, y: r.y + r.height / 2};
        })()""")
        page.call("Input.dispatchMouseEvent", type="mouseMoved", x=point["x"], y=point["y"])
        tip = page.evaluate("document.getElementById('ac-tip').textContent")
        assert f"trial {point['id']} · Pareto front" in tip and "val perplexity" in tip and "accuracy" not in tip
        assert page.errors() == []
