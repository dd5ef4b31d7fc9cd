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
    const timer = setTimeout(() => reject(new Error("the proxy did not start: " + out)), PATIENCE_MS);
    child.on("exit", (code) => {
      clearTimeout(timer);
      code === 0 ? resolve(null) : reject(new Error("the proxy setup failed: " + out));
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

  // The server restarts: every page is told so at once, and each picks its own wait.
  process.kill(proxy.serverPid, "SIGTERM");
  const waits = [];
  for (const page of [pageA, pageB]) {
    await page.waitForFunction(
      () => document.getElementById("status").dataset.retryMs !== undefined,
      null,
      { timeout: PATIENCE_MS },
    );
    assert.match(await page.textContent("#status"), /^disconnected .*reconnecting in \d+\.\d s$/);
    waits.push(Number(await page.getAttribute("#status", "data-retry-ms")));
  }
  assert.ok(waits.every((w) => w >= 0 && w <= 8000), String(waits));
  assert.notEqual(waits[0], waits[1], "two pages picked the same reconnect wait");
});
