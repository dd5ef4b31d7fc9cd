// Resumable sessions through the page: a connection cut underneath a tab (no close frame)
// comes back by itself as the same user, with every line it missed, and the room never hears
// it leave. The pages reach the server through a relay the test can break.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import * as shared from "./page.mjs";
import { lines, send, statusText, stopServer } from "./page.mjs";

const ROOT = path.resolve(import.meta.dirname, "../..");
const BINARY = process.env.THREADCHAT ?? path.join(ROOT, "target/debug/threadchat");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const PATIENCE_MS = 20_000;
const waitForLine = (page, line) => shared.waitForLine(page, line, PATIENCE_MS);
const waitForStatus = (page, pattern) => shared.waitForStatus(page, pattern, PATIENCE_MS);

// A TCP relay in front of the WebSocket port. Each accepted connection gets a number, so a
// test can tell one page's connections from another's. `cut` resets both sides: the browser
// sees the connection fail (1006) and the server sees it drop, neither sees a close frame.
// While `refusing`, new connections are reset at once, so a page stays away until let back.
// While `plain`, the handshake loses its subprotocol offer, as from a server that has none.
function startRelay() {
  // libuv refuses to reset a socket whose end is under way (and node then never closes it,
  // which hangs the exit): such a socket is just destroyed.
  const reset = (socket) => {
    if (socket.destroyed) return;
    if (socket.writableEnded) socket.destroy();
    else socket.resetAndDestroy();
  };
  const relay = { upstreamPort: null, refusing: false, plain: false, opened: 0, open: new Map() };
  relay.server = net.createServer((client) => {
    if (relay.refusing) return client.resetAndDestroy();
    const id = ++relay.opened;
    const upstream = net.connect(relay.upstreamPort, "127.0.0.1");
    relay.open.set(id, { client, upstream });
    const forget = () => relay.open.delete(id);
    client.on("close", forget);
    // An orderly end is passed on as one; an error on one side resets the other.
    upstream.pipe(client);
    if (relay.plain) {
      // The request head comes in one piece on loopback, and nothing follows it until the
      // answer.
      client.once("data", (head) => {
        const stripped = head.toString("latin1").replace(/^Sec-WebSocket-Protocol:.*\r\n/im, "");
        upstream.write(stripped, "latin1");
        client.pipe(upstream);
      });
    } else {
      client.pipe(upstream);
    }
    client.on("error", () => reset(upstream));
    upstream.on("error", () => reset(client));
  });
  // Resets the connections of `page` (from `join`) that are still open; returns how many.
  relay.cut = (page) => {
    let cut = 0;
    for (const [id, { client, upstream }] of relay.open) {
      if (id <= page.since || id > page.until) continue;
      reset(client);
      reset(upstream);
      relay.open.delete(id);
      cut++;
    }
    return cut;
  };
  relay.stop = () => new Promise((resolve) => {
    for (const { client, upstream } of relay.open.values()) {
      client.destroy();
      upstream.destroy();
    }
    relay.server.close(resolve);
  });
  return new Promise((resolve) => {
    relay.server.listen(0, "127.0.0.1", () => {
      relay.port = relay.server.address().port;
      resolve(relay);
    });
  });
}

// Starts the server with the pages pointed at the relay; resolves once it has printed both
// addresses.
function startServer(relay, extra = []) {
  const wsUrl = `ws://127.0.0.1:${relay.port}/chat`;
  const child = spawn(BINARY, ["--http-port", "0", "--ws-port", "0", "--ws-url", wsUrl, ...extra], {
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
      const http = /page on (http:\/\/[\d.]+:\d+\/)/.exec(out);
      const ws = /WebSocket server on ws:\/\/[\d.]+:(\d+)\//.exec(out);
      if (http && ws) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        relay.upstreamPort = +ws[1];
        resolve({ child, url: http[1] });
      }
    });
  });
}

const mine = (page) => page.$$eval("#chat-echo-area li.mine", (items) => items.map((li) => li.textContent));
const storedToken = (page) => page.evaluate(() => sessionStorage.getItem("threadchat.token"));

// Opens the chat in `page` and returns its nickname and the numbers of the relay's
// connections it opened meanwhile (one page joins at a time).
async function join(page, server, relay) {
  const since = relay.opened;
  await page.goto(server.url);
  await waitForStatus(page, /^connected as user-\d+$/);
  const nickname = (await statusText(page)).replace("connected as ", "");
  return { nickname, since, until: relay.opened };
}

// Cuts the connections `joined` opened and keeps the page away until the returned function
// lets it back; resolves once the page has seen the drop.
async function cutAndHold(page, relay, joined) {
  relay.refusing = true;
  assert.ok(relay.cut(joined) >= 1, "no connection to cut");
  await waitForStatus(page, /^disconnected \(connection lost\), reconnecting in /);
  return () => { relay.refusing = false; };
}

let browser, relay, server;

before(async () => {
  relay = await startRelay();
  server = await startServer(relay);
  const profile = mkdtempSync(path.join(tmpdir(), "threadchat-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  if (server) await stopServer(server);
  await relay?.stop();
});

test("a tab whose connection is cut comes back as itself with every line it missed, once", async () => {
  const pageA = await browser.newPage();
  const pageB = await browser.newPage();
  const a = await join(pageA, server, relay);
  const b = await join(pageB, server, relay);
  assert.notEqual(a.nickname, b.nickname);
  await send(pageB, "before the cut");
  await waitForLine(pageA, `${b.nickname}: before the cut`);
  await waitForLine(pageB, `${b.nickname}: before the cut`);
  const seenByB = (await lines(pageB)).length;

  const letBack = await cutAndHold(pageA, relay, a);
  // While A is away (every try refused), B talks.
  const missed = [1, 2, 3, 4, 5].map((i) => `${b.nickname}: while A is away ${i}`);
  for (let i = 1; i <= 5; i++) await send(pageB, `while A is away ${i}`);
  await waitForLine(pageB, missed.at(-1));
  letBack();

  await waitForStatus(pageA, new RegExp(`^reconnected as ${a.nickname} \\(5 missed lines\\)$`));
  await waitForLine(pageA, missed.at(-1));
  await send(pageA, "back again");
  await waitForLine(pageB, `${a.nickname}: back again`);
  await waitForLine(pageA, `${a.nickname}: back again`);

  const shownA = await lines(pageA);
  const from = shownA.indexOf(`${b.nickname}: before the cut`);
  assert.equal(shownA.lastIndexOf(`${b.nickname}: before the cut`), from, "a line came twice");
  assert.deepEqual(shownA.slice(from + 1), [...missed, `${a.nickname}: back again`]);
  assert.equal(await pageA.$$eval("#chat-echo-area li.gap", (items) => items.length), 0);
  assert.deepEqual(await mine(pageA), [`${a.nickname}: back again`]);
  // B heard B's lines and A's, and nothing about A leaving or joining.
  assert.deepEqual((await lines(pageB)).slice(seenByB), [...missed, `${a.nickname}: back again`]);
  await pageA.close();
  await pageB.close();
});

test("a reload while the connection is down comes back as the same user, from the tab's storage", async () => {
  const pageA = await browser.newPage();
  const witness = await browser.newPage();
  const a = await join(pageA, server, relay);
  const w = await join(witness, server, relay);
  await waitForLine(pageA, ` .... ${w.nickname} has joined.`);
  // Cut underneath, so that the unload has no connection to close: the server keeps the
  // session, and the reloaded page finds its token in sessionStorage.
  const letBack = await cutAndHold(pageA, relay, a);
  await send(witness, "while A reloads");
  await waitForLine(witness, `${w.nickname}: while A reloads`);
  await pageA.reload();
  await waitForStatus(pageA, /^disconnected \(connection lost\), reconnecting in /);
  letBack();
  await waitForStatus(pageA, new RegExp(`^reconnected as ${a.nickname} \\(1 missed line\\)$`));
  // The reloaded list starts empty: it holds the missed line, then live ones.
  assert.deepEqual(await lines(pageA), [`${w.nickname}: while A reloads`]);
  await send(pageA, "reloaded");
  await waitForLine(witness, `${a.nickname}: reloaded`);
  const heard = await lines(witness);
  const aboutA = heard.filter((l) => l.startsWith(` .... ${a.nickname} has `));
  assert.deepEqual(aboutA, [], "the witness heard A leave or join");
  await pageA.close();
  await witness.close();
});

test("a second tab is another user, and leaves the first one connected", async () => {
  const pageA = await browser.newPage();
  const a = await join(pageA, server, relay);
  const second = await browser.newPage();
  const other = await join(second, server, relay);
  assert.notEqual(other.nickname, a.nickname);
  await waitForLine(pageA, ` .... ${other.nickname} has joined.`);
  const tokens = [await storedToken(pageA), await storedToken(second)];
  assert.match(tokens[0], /^[0-9a-f]{32}$/);
  assert.notEqual(tokens[0], tokens[1]);
  await send(second, "from the second tab");
  await waitForLine(pageA, `${other.nickname}: from the second tab`);
  assert.equal(await statusText(pageA), `connected as ${a.nickname}`);
  await pageA.close();
  await second.close();
});

test("a tab opened from another shares its storage: it takes the session over, and the first stays closed", async () => {
  const pageA = await browser.newPage();
  const a = await join(pageA, server, relay);
  const [copy] = await Promise.all([
    browser.waitForEvent("page"),
    pageA.evaluate(() => window.open(location.href)),
  ]);
  await waitForStatus(copy, new RegExp(`^reconnected as ${a.nickname}$`));
  await waitForStatus(pageA,
    new RegExp(`^disconnected: ${a.nickname} continued in another tab or window`));
  // It stays closed: no retry was planned, and its storage no longer holds the session.
  assert.equal(await pageA.getAttribute("#status", "data-retry-ms"), null);
  assert.equal(await storedToken(pageA), null);
  await pageA.close();
  await copy.close();
});

test("a session that comes back without its place keeps its name, under a mark", async () => {
  const pageA = await browser.newPage();
  const a = await join(pageA, server, relay);
  // A position the server never gave: it cannot place the page after it.
  await pageA.evaluate(() => sessionStorage.setItem("threadchat.position", "999999999"));
  const letBack = await cutAndHold(pageA, relay, a);
  letBack();
  await waitForStatus(pageA,
    new RegExp(`^reconnected as ${a.nickname}; some lines may have been missed$`));
  assert.equal((await lines(pageA)).at(-1), " .... some lines may have been missed here");
  await send(pageA, "still me");
  await waitForLine(pageA, `${a.nickname}: still me`);
  assert.deepEqual(await mine(pageA), [`${a.nickname}: still me`]);
  await pageA.close();
});

test("a server that does not pick the subprotocol gets the plain contract from the page", async () => {
  relay.plain = true;
  const pageP = await browser.newPage();
  const sent = [];
  let sockets = 0;
  pageP.on("websocket", (ws) => {
    sockets++;
    ws.on("framesent", (frame) => sent.push(frame.payload));
  });
  try {
    // Chromium fails the handshakes that offered the subprotocol; a try without the offer
    // gets through.
    const p = await join(pageP, server, relay);
    assert.ok(sockets >= 3, `${sockets} tries`);
    assert.equal(await storedToken(pageP), null);
    await send(pageP, "plain as before");
    await waitForLine(pageP, `${p.nickname}: plain as before`);
    // Earlier tests' sessions may end meanwhile: their leaves are no part of this contract.
    const others = (line) => / has left\.$/.test(line) && !line.includes(p.nickname);
    assert.deepEqual((await lines(pageP)).filter((line) => !others(line)),
      [` .... ${p.nickname} has joined.`, `${p.nickname}: plain as before`]);
    assert.deepEqual(sent, ["plain as before"], "the page said more than the line");
    assert.deepEqual(await mine(pageP), [`${p.nickname}: plain as before`]);
  } finally {
    relay.plain = false;
    await pageP.close();
  }
});

test("a plain reload of a connected tab keeps its name, and nobody hears of it", async () => {
  // Chromium closes with 1001 as the page unloads: the server waits a moment for it.
  const pageA = await browser.newPage();
  const witness = await browser.newPage();
  const a = await join(pageA, server, relay);
  await join(witness, server, relay);
  await pageA.reload();
  await waitForStatus(pageA, /^(re)?connected as user-\d+/);
  assert.match(await statusText(pageA), new RegExp(`^reconnected as ${a.nickname}$`));
  await send(pageA, "after the reload");
  await waitForLine(witness, `${a.nickname}: after the reload`);
  const heard = await lines(witness);
  assert.ok(!heard.includes(` .... ${a.nickname} has left.`), JSON.stringify(heard));
  await pageA.close();
  await witness.close();
});

test("back after the resume window: a new name, and a mark where lines may be missing", async () => {
  const shortRelay = await startRelay();
  const shortServer = await startServer(shortRelay, ["--resume-window", "1"]);
  const pageA = await browser.newPage();
  const witness = await browser.newPage();
  try {
    const a = await join(pageA, shortServer, shortRelay);
    await join(witness, shortServer, shortRelay);
    const letBack = await cutAndHold(pageA, shortRelay, a);
    await waitForLine(witness, ` .... ${a.nickname} has left.`);
    letBack();
    await waitForStatus(pageA, new RegExp(
      `^connected as user-\\d+ \\(the session as ${a.nickname} had ended\\); some lines may have been missed$`));
    const shown = await lines(pageA);
    const gapAt = shown.indexOf(" .... some lines may have been missed here");
    assert.ok(gapAt > 0, `no gap mark in ${JSON.stringify(shown)}`);
    assert.equal(await pageA.$$eval("#chat-echo-area li.gap.notice", (items) => items.length), 1);
    const again = (await statusText(pageA)).match(/^connected as (user-\d+)/)[1];
    assert.notEqual(again, a.nickname);
    assert.equal(shown[gapAt + 1], ` .... ${again} has joined.`);
    await waitForLine(witness, ` .... ${again} has joined.`);
  } finally {
    await pageA.close();
    await witness.close();
    await stopServer(shortServer);
    await shortRelay.stop();
  }
});
