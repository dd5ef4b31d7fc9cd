// The admin port's page, for people: its plots drawn and moving while two pages chat,
// checked in headless Chromium on the real server, with a screenshot kept in target/e2e.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { send, stopServer, waitForStatus } from "./page.mjs";

const ROOT = path.resolve(import.meta.dirname, "../..");
const BINARY = process.env.THREADCHAT ?? path.join(ROOT, "target/debug/threadchat");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = path.join(ROOT, "target/e2e");
const PATIENCE_MS = 10_000;

// Starts the server with its admin port; resolves once it has printed all three addresses.
function startServer() {
  const child = spawn(BINARY, ["--http-port", "0", "--ws-port", "0", "--admin-port", "0"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error("server did not start: " + out));
    }, PATIENCE_MS);
    child.on("exit", (code) => reject(new Error("server exited with " + code + ": " + out)));
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const page = /chat page on (http:\/\/[\d.:]+\/)/.exec(out);
      const admin = /admin on (http:\/\/[\d.:]+\/)/.exec(out);
      if (page && admin) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        resolve({ child, url: page[1], admin: admin[1] });
      }
    });
  });
}

let browser, server;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer();
  const profile = mkdtempSync(path.join(tmpdir(), "threadchat-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 900, height: 700 },
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  if (server) await stopServer(server);
});

// How many pixels of a plot's canvas are drawn on.
const inked = (page, id) =>
  page.$eval("#" + id, (canvas) => {
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    let count = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) count++;
    return count;
  });

test("the admin page plots clients and lines per second, moving while the room chats", async () => {
  const [one, two] = [await browser.newPage(), await browser.newPage()];
  for (const page of [one, two]) {
    await page.goto(server.url);
    await waitForStatus(page, /^connected as user-\d+$/, PATIENCE_MS);
  }
  const admin = await browser.newPage();
  await admin.goto(server.admin);
  // Two clients, as of the room's next pulse.
  await admin.waitForFunction(() => document.getElementById("v-clients").textContent === "(2)", null, {
    timeout: PATIENCE_MS,
  });
  // Lines said every 100 ms for three seconds: the lines-per-second plot rises.
  for (let i = 0; i < 30; i++) {
    await send(i % 2 ? one : two, "line " + i);
    await one.waitForTimeout(100);
  }
  await admin.waitForFunction(
    () => Number(document.getElementById("v-lines").textContent.replace(/[()]/g, "")) > 0,
    null,
    { timeout: PATIENCE_MS },
  );
  for (const plot of ["clients", "lines", "sent", "busy", "memory"]) {
    assert.ok((await inked(admin, plot)) > 0, plot + " is drawn");
  }
  await admin.screenshot({ path: path.join(SHOTS, "admin.png") });
});
