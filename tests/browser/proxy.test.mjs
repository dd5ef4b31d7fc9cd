// On a real server: the page over https through nginx (configured by docs/DEPLOY.md), its
// WebSocket over wss:// through the same proxy, and reconnects that do not stampede.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const ROOT = path.resolve(import.meta.dirname, "../..");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const PATIENCE_MS = 20_000;

// Starts threadchat behind nginx; resolves with the https URL and the server's pid, or with
// null when nginx or openssl is missing (the script has then said so, loudly).
function startBehindProxy() {
  const child = spawn("bash", ["tests/shell/proxy/serve.sh"], {
    cwd: ROOT,
    detached: true,
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      process.kill(-child.pid, "SIGTERM"); // the script, nginx and threadchat
      reject(new Error("the proxy did not start: " + out));
    }, PATIENCE_MS);
    child.on("exit", (code) => {
      clearTimeout(timer);
      // 77: skipped, nginx or openssl missing (never under CI, where serve.sh fails instead).
      code === 77 ? resolve(null) : reject(new Error("the proxy setup failed: " + out));
    });
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const ready = /HTTPS_URL=(\S+) SERVER_PID=(\d+)/.exec(out);
      if (ready) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        resolve({ child, url: ready[1], serverPid: +ready[2] });
      }
    });
  });
}

async function nicknameOf(page) {
  await page.waitForFunction(
    () => /^connected as user-\d+$/.test(document.getElementById("status").textContent),
    null,
    { timeout: PATIENCE_MS },
  );
  return (await page.textContent("#status")).replace("connected as ", "");
}

let proxy, browser;

before(async () => {
  proxy = await startBehindProxy();
  if (!proxy) return;
  const profile = mkdtempSync(path.join(tmpdir(), "threadchat-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // The test's certificate is self-signed.
    ignoreHTTPSErrors: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run", "--ignore-certificate-errors",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  if (proxy) process.kill(-proxy.child.pid, "SIGTERM");
});

test("over https the pages chat over wss:// through nginx, and reconnect at different times", async (t) => {
  if (!proxy) return t.skip("nginx or openssl missing (see the warning above)");
  assert.match(proxy.url, /^https:\/\//);
  const [pageA, pageB] = [await browser.newPage(), await browser.newPage()];
  const sockets = [];
  pageA.on("websocket", (ws) => sockets.push(ws.url()));
  await pageA.goto(proxy.url);
  const nickA = await nicknameOf(pageA);
  await pageB.goto(proxy.url);
  const nickB = await nicknameOf(pageB);
  assert.deepEqual(sockets, [proxy.url.replace("https://", "wss://") + "ws"]);

  await pageA.fill("#chat-input", "hello over tls");
  await pageA.press("#chat-input", "Enter");
  await pageB.waitForFunction(
    (want) => [...document.querySelectorAll("#chat-echo-area li")].some((li) => li.textContent === want),
    `${nickA}: hello over tls`,
    { timeout: PATIENCE_MS },
  );
  assert.notEqual(nickA, nickB);

  // The server stops: every page is told so at once, and each picks its own wait, a random
  // time up to a cap that starts at 0.5 s and doubles with each failed try (README).
  const pages = [pageA, pageB];
  for (let i = 0; i < 4; i++) {
    const page = await browser.newPage();
    await page.goto(proxy.url);
    await nicknameOf(page);
    pages.push(page);
  }
  for (const page of pages) {
    await page.evaluate(() => {
      const status = document.getElementById("status");
      window.retryWaits = [];
      new MutationObserver(() => window.retryWaits.push(Number(status.dataset.retryMs)))
        .observe(status, { attributes: true, attributeFilter: ["data-retry-ms"] });
    });
  }
  process.kill(proxy.serverPid, "SIGTERM");
  const waits = [];
  for (const page of pages) {
    // Three tries: the first after the close, two more after nginx answers 502.
    await page.waitForFunction(() => window.retryWaits.length >= 3, null, { timeout: PATIENCE_MS });
    assert.match(await page.textContent("#status"), /^disconnected .*reconnecting in \d+\.\d s$/);
    waits.push(await page.evaluate(() => window.retryWaits.slice(0, 3)));
  }
  const caps = [500, 1000, 2000];
  for (const w of waits) {
    w.forEach((ms, i) => assert.ok(ms >= 0 && ms <= caps[i], `try ${i + 1} waits ${ms} ms: ${waits}`));
  }
  // Not in lockstep: six uniform first waits all within 25 ms of each other would happen
  // about twice in a million runs.
  const first = waits.map((w) => w[0]);
  assert.ok(Math.max(...first) - Math.min(...first) >= 25, `first waits ${first}`);
  // The cap doubles: with a cap stuck at 0.5 s no later wait could pass it; with a doubling
  // one, twelve later waits all stay under it about four times in a million.
  assert.ok(waits.some((w) => w[1] > 500 || w[2] > 500), `later waits ${waits}`);
});
