// Starts the real local server (pigeonhole-local) for a test file, on a
// free loopback port with its own data directory, and stops it again.
// Shared by browser.test.js, console.test.js and node.test.js.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
export const repo = resolve(here, '../../..');
export const serverBin = process.env.PIGEONHOLE_LOCAL_BIN || join(repo, 'target/debug/pigeonhole-local');
export const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const artifacts = resolve(process.env.PIGEONHOLE_ARTIFACTS_DIR || join(repo, 'target/browser-artifacts'));

/** Chromium's flags for these tests: headless, nothing fetched in the background. */
export const chromiumArgs = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/**
 * Starts pigeonhole-local on a free port with the given admin and operator
 * tokens (and any further environment); resolves to {url, stop}.
 */
export async function startServer({ adminToken, operatorToken, env = {} }) {
  if (!existsSync(serverBin)) {
    throw new Error(`${serverBin} not found: run cargo build -p pigeonhole-local or set PIGEONHOLE_LOCAL_BIN`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'pigeonhole-browser-'));
  const child = spawn(serverBin, ['--listen', '127.0.0.1:0', '--data-dir', dataDir], {
    env: {
      ...process.env,
      ADMIN_TOKEN: adminToken,
      OPERATOR_TOKENS: operatorToken,
      MASTER_KEY: randomBytes(32).toString('base64'),
      POLL_RATE_LIMIT: '600',
      RUST_LOG: process.env.RUST_LOG || 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  const url = await new Promise((resolveUrl, reject) => {
    let stdout = '';
    const timer = setTimeout(() => reject(new Error(`the server did not start in 15 s:\n${stderr}`)), 15000);
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const match = stdout.match(/listening on (http:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolveUrl(match[1]);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited with ${code}:\n${stderr}`));
    });
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dataDir, { recursive: true, force: true });
  };
  return { url, stop };
}
