"""Click a TensorBoard HParams sub-tab (or open a collapsed custom-scalars category) and screenshot it.

The HParams dashboard keeps its sub-tab out of the URL, and a closed custom-scalars category
stays closed, so ``chromium --screenshot`` alone cannot show them; this drives Chromium through
the Chrome DevTools protocol. Usage (TensorBoard on port 6006, chromium on the path, aiohttp installed)::

    python shoot_hparams_tab.py "http://localhost:6006/#hparams" "Parallel Coordinates View" out.png 2000 1000
"""
import asyncio, base64, json, sys, subprocess, time
import aiohttp

URL, TAB, OUT, W, H = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
proc = subprocess.Popen(["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-port=9333",
                         f"--window-size={W},{H}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
# A tab of that name is clicked; a (custom-scalars) category pane of that name is opened.
FIND = """
(() => { const tabs = [], panes = []; const walk = (root) => { for (const el of root.querySelectorAll('*')) {
  if (el.tagName === 'PAPER-TAB' && el.textContent.trim().toLowerCase() === %s) tabs.push(el);
  if (el.category && el.category.name === %s && 'opened' in el) panes.push(el);
  if (el.shadowRoot) walk(el.shadowRoot); } }; walk(document);
  if (tabs.length) { tabs[0].click(); return 'tab'; }
  if (panes.length) { panes[0].opened = true; return 'pane'; } return false; })()
""" % (json.dumps(TAB.lower()), json.dumps(TAB))

async def main():
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            try:
                pages = await (await http.get("http://localhost:9333/json")).json(); break
            except Exception:
                await asyncio.sleep(0.2)
        ws_url = [p for p in pages if p["type"] == "page"][0]["webSocketDebuggerUrl"]
        async with http.ws_connect(ws_url, max_msg_size=0) as ws:
            n = 0
            async def call(method, **params):
                nonlocal n; n += 1; await ws.send_json({"id": n, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json()
                    if msg.get("id") == n: return msg
            await call("Page.navigate", url=URL); await asyncio.sleep(8)
            r = await call("Runtime.evaluate", expression=FIND, returnByValue=True); print("clicked", r["result"])
            await asyncio.sleep(5)
            shot = await call("Page.captureScreenshot", format="png")
            open(OUT, "wb").write(base64.b64decode(shot["result"]["data"]))
try:
    asyncio.run(main())
finally:
    proc.terminate(); proc.wait()
