// The cookbook's promise, "open two browser tabs and chat", checked in headless Chromium
// through the real DOM of the page the real server sends.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import * as shared from "./page.mjs";
import { lines, send, statusText, stopServer } from "./page.mjs";

const ROOT = path.resolve(import.meta.dirname, "../..");
const BINARY = process.env.THREADCHAT ?? path.join(ROOT, "target/debug/threadchat");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = path.join(ROOT, "target/e2e");
const PATIENCE_MS = 10_000;
const waitForLine = (page, line) => shared.waitForLine(page, line, PATIENCE_MS);
const waitForStatus = (page, pattern) => shared.waitForStatus(page, pattern, PATIENCE_MS);

// Starts the server and resolves once it has printed both addresses.
function startServer(httpPort = 0, wsPort = 0) {
  const child = spawn(BINARY, ["--http-port", String(httpPort), "--ws-port", String(wsPort)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL"); // or it would keep the test running
      reject(new Error("server did not start: " + out));
    }, PATIENCE_MS);
    child.on("exit", (code) => reject(new Error("server exited with " + code + ": " + out)));
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const http = /http:\/\/([\d.]+):(\d+)\//.exec(out);
      const ws = /ws:\/\/([\d.]+):(\d+)\//.exec(out);
      if (http && ws) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        resolve({ child, url: `http://${http[1]}:${http[2]}/`, httpPort: +http[2], wsPort: +ws[2] });
      }
    });
  });
}

async function nicknameOf(page) {
  await waitForStatus(page, /^connected as user-\d+$/);
  return (await statusText(page)).replace("connected as ", "");
}

let browser, server, pageA, pageB, nickA, nickB;
const dialogs = [];

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer();
  // A fresh profile folder each run (Chromium's --user-data-dir).
  const profile = mkdtempSync(path.join(tmpdir(), "threadchat-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 420, height: 640 },
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  pageA = await browser.newPage();
  pageB = await browser.newPage();
  for (const page of [pageA, pageB]) {
    page.on("dialog", async (dialog) => {
      dialogs.push(dialog.message());
      await dialog.dismiss();
    });
  }
});

after(async () => {
  await browser?.close();
  if (server) await stopServer(server);
});

test("each page shows its own join, then the other's, and its nickname", async () => {
  await pageA.goto(server.url);
  nickA = await nicknameOf(pageA);
  await pageB.goto(server.url);
  nickB = await nicknameOf(pageB);
  assert.notEqual(nickA, nickB);
  await waitForLine(pageA, ` .... ${nickB} has joined.`);
  assert.deepEqual((await lines(pageA)).slice(0, 2), [` .... ${nickA} has joined.`, ` .... ${nickB} has joined.`]);
  assert.equal((await lines(pageB))[0], ` .... ${nickB} has joined.`);
  assert.equal(await pageA.getAttribute("html", "lang"), "en");
  assert.equal(await pageA.title(), "threadchat");
});

test("Enter sends a line that both pages show; the input clears; empty lines are not sent", async () => {
  await send(pageA, "hello from A");
  await waitForLine(pageA, `${nickA}: hello from A`);
  await waitForLine(pageB, `${nickA}: hello from A`);
  assert.equal(await pageA.inputValue("#chat-input"), "");
  const mine = await pageA.$$eval("#chat-echo-area li.mine", (items) => items.map((li) => li.textContent));
  assert.deepEqual(mine, [`${nickA}: hello from A`]);
  const notices = await pageA.$$eval("#chat-echo-area li.notice", (items) => items.length);
  assert.equal(notices, 2);
  const before = (await lines(pageB)).length;
  await pageA.press("#chat-input", "Enter");
  await send(pageA, "marker");
  await waitForLine(pageB, `${nickA}: marker`);
  assert.equal((await lines(pageB)).length, before + 1, "an empty line was sent");
});

test("markup arrives as text and runs nothing", async () => {
  const xss = "<img src=x onerror=alert(1)>";
  await send(pageA, xss);
  await waitForLine(pageB, `${nickA}: ${xss}`);
  assert.equal(await pageB.$$eval("#chat-echo-area img", (imgs) => imgs.length), 0);
  assert.deepEqual(dialogs, []);
});

test("a message over the server's limit stays in the input with a reason", async () => {
  const big = "x".repeat(70_000);
  await pageA.fill("#chat-input", big);
  await pageA.press("#chat-input", "Enter");
  assert.match(await pageA.textContent("#problem"), /Not sent: longer than 65536 bytes/);
  assert.equal((await pageA.inputValue("#chat-input")).length, big.length);
  await pageA.fill("#chat-input", "");
});

test("the keyboard alone is enough: the input has focus and Tab reaches Send", async () => {
  assert.equal(await pageA.evaluate(() => document.activeElement.id), "chat-input");
  await pageA.fill("#chat-input", "sent with the button");
  await pageA.keyboard.press("Tab");
  assert.equal(await pageA.evaluate(() => document.activeElement.tagName), "BUTTON");
  await pageA.keyboard.press("Enter");
  await waitForLine(pageB, `${nickA}: sent with the button`);
});

test("the list follows new lines unless the reader has scrolled up to read", async () => {
  const gapBelow = (page) =>
    page.$eval("#chat-echo-area", (el) => el.scrollHeight - el.scrollTop - el.clientHeight);
  // Enough lines to overflow the list, within the default burst of 40.
  for (let i = 0; i < 30; i++) await send(pageB, `filler ${i}`);
  await waitForLine(pageA, `${nickB}: filler 29`);
  assert.ok((await gapBelow(pageA)) < 2, "the list did not follow the newest line");
  await pageA.$eval("#chat-echo-area", (el) => { el.scrollTop = 0; });
  await send(pageB, "while A reads history");
  await waitForLine(pageA, `${nickB}: while A reads history`);
  assert.equal(await pageA.$eval("#chat-echo-area", (el) => el.scrollTop), 0, "the list jumped");
});

test("closing page B tells page A", async () => {
  await pageB.screenshot({ path: path.join(SHOTS, "page-b.png") });
  await pageB.close();
  await waitForLine(pageA, ` .... ${nickB} has left.`);
});

test("page A survives a server restart: shows the close, reconnects, chats again", async () => {
  const { httpPort, wsPort } = server;
  assert.equal(await stopServer(server), 0);
  await waitForStatus(pageA, /^disconnected \(closed 1001: server shutting down\)/);
  await send(pageA, "typed while the server is down");
  assert.match(await pageA.textContent("#problem"), /Not sent: disconnected/);
  assert.equal(await pageA.inputValue("#chat-input"), "typed while the server is down");

  server = await startServer(httpPort, wsPort);
  // The new process does not know the page's session: the page comes back under a new name,
  // after a mark that lines may have been missed, and says so.
  await waitForStatus(pageA,
    new RegExp(`^connected as user-\\d+ \\(the session as ${nickA} had ended\\); some lines may have been missed$`));
  const again = (await statusText(pageA)).match(/^connected as (user-\d+)/)[1];
  await waitForLine(pageA, " .... some lines may have been missed here");
  await pageA.press("#chat-input", "Enter");
  await waitForLine(pageA, `${again}: typed while the server is down`);
  await pageA.screenshot({ path: path.join(SHOTS, "page-a.png") });
});
