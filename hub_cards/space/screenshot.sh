#!/usr/bin/env bash
# Screenshot of the demo Space for the README: the app with the `make demo` exports, one shapes image submitted in
# headless Chromium. Run from the repository root after `make demo`; writes docs/space_screenshot.png.
set -euo pipefail
MODELS=${MODELS:-outputs/demo}
OUT=${OUT:-docs/space_screenshot.png}
PORT=${PORT:-7861}
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
.venv/bin/python hub_cards/space/app.py --host 127.0.0.1 --port "$PORT" \
    --gsb "$MODELS/gated_sparse_blip_shapes-export" --qvision "$MODELS/qvision_shapes-export" \
    --classifier "$MODELS/dtp_vit_digits-export" --zero-shot "$MODELS/dtp_clip_shapes-export" &
APP=$!
trap 'kill $APP' EXIT
mkdir -p "$(dirname "$OUT")"
.venv/bin/python - "$PORT" "$OUT" <<'PY'
import os, socket, sys, tempfile, time
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait
from leanvision.training.data.shapes import class_names, make_shapes_dataset

port, out = sys.argv[1], sys.argv[2]
tmp = tempfile.mkdtemp()
image = os.path.join(tmp, "shape.png")
make_shapes_dataset(1, seed=3, max_objects=1, split="test")[0]["image"].resize((256, 256)).save(image)
for _ in range(240):
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
        break
    except OSError:
        time.sleep(0.5)
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--window-size=1280,1700", f"--user-data-dir={tmp}/profile"):
    options.add_argument(flag)
driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"), options=options)
try:
    driver.get(f"http://127.0.0.1:{port}/")
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: d.find_element("css selector", "#image input[type=file]")).send_keys(image)
    wait.until(lambda d: d.find_elements("css selector", "#image img"))
    for elem_id, text in (("candidate-labels", ", ".join(class_names()[:6])), ("template", "a photo of a {}")):
        box = driver.find_element("css selector", f"#{elem_id} textarea")
        box.clear()
        box.send_keys(text)
    driver.find_element("css selector", "#submit").click()
    wait.until(lambda d: d.find_element("css selector", "#boundary-summary textarea").get_property("value"))
    wait.until(lambda d: all(i.get_property("complete") for i in d.find_elements("css selector", "img")))
    driver.save_screenshot(out)
finally:
    driver.quit()
print(f"wrote {out}")
PY
