// What the browser tests do to and read from the chat page, and to the server they start.

// The page's chat lines, in order.
export const lines = (page) => page.$$eval("#chat-echo-area li", (items) => items.map((li) => li.textContent));
export const statusText = (page) => page.textContent("#status");

// Types a line into the page and sends it, as a person would.
export async function send(page, text) {
  await page.fill("#chat-input", text);
  await page.press("#chat-input", "Enter");
}

// Waits (at most `patienceMs`) for the page to show `line`.
export async function waitForLine(page, line, patienceMs) {
  await page.waitForFunction(
    (want) => [...document.querySelectorAll("#chat-echo-area li")].some((li) => li.textContent === want),
    line,
    { timeout: patienceMs },
  );
}

// Waits (at most `patienceMs`) for the status line to match `pattern`.
export async function waitForStatus(page, pattern, patienceMs) {
  await page.waitForFunction(
    (source) => new RegExp(source).test(document.getElementById("status").textContent),
    pattern.source,
    { timeout: patienceMs },
  );
}

// How long a server told to stop may take: README promises an exit within 2 s of SIGTERM;
// the rest is a loaded machine's margin. One still running then is killed, and the test fails.
export const STOP_MS = 5_000;

// Ends a server started by a test with SIGTERM; resolves with its exit code, or rejects once
// it has outlived STOP_MS (it is killed then).
export function stopServer(server) {
  return new Promise((resolve, reject) => {
    if (server.child.exitCode !== null) return resolve(server.child.exitCode);
    const timer = setTimeout(() => {
      server.child.kill("SIGKILL");
      reject(new Error(`the server was still running ${STOP_MS} ms after SIGTERM; killed it`));
    }, STOP_MS);
    server.child.on("exit", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
    server.child.kill("SIGTERM");
  });
}
