import { ConfabError, Code, codeFromHttpStatus } from "./errors";

/** `baseUrl` with a trailing slash, resolved against the page in a browser. */
function base(baseUrl: string): URL {
  const withSlash = baseUrl.endsWith("/") ? baseUrl : baseUrl + "/";
  const page = (globalThis as { location?: { href: string } }).location?.href;
  return page ? new URL(withSlash, page) : new URL(withSlash);
}

/** `path` (without a leading slash) under `baseUrl`. */
export function httpUrl(baseUrl: string, path: string): string {
  return new URL(path, base(baseUrl)).toString();
}

/** The WebSocket URL of `path` under `baseUrl`: ws:// for http://, wss:// for https://. */
export function wsUrl(baseUrl: string, path: string): string {
  const u = new URL(path, base(baseUrl));
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.toString();
}

async function readJson(res: Response, what: string): Promise<unknown> {
  const text = await res.text();
  if (!res.ok) {
    throw new ConfabError(
      "refused",
      codeFromHttpStatus(res.status),
      `${what}: HTTP ${res.status}${text ? `: ${text.slice(0, 300)}` : ""}`,
    );
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new ConfabError("protocol", Code.INTERNAL, `${what}: not JSON: ${text.slice(0, 300)}`);
  }
}

/** `GET /v1/auth`: whether the server hands out development tokens (`POST /v1/dev/token`). */
export async function authInfo(baseUrl: string): Promise<{ devTokens: boolean }> {
  const what = "GET /v1/auth";
  const res = await fetch(httpUrl(baseUrl, "v1/auth"), { headers: { accept: "application/json" } });
  const body = (await readJson(res, what)) as { dev_tokens?: unknown };
  if (typeof body?.dev_tokens !== "boolean") {
    throw new ConfabError("protocol", Code.INTERNAL, `${what}: no boolean "dev_tokens" in ${JSON.stringify(body)}`);
  }
  return { devTokens: body.dev_tokens };
}

/** `POST /v1/dev/token`: a development token for `userId` (only servers on the public development secret). */
export async function devToken(baseUrl: string, userId: string): Promise<string> {
  const what = "POST /v1/dev/token";
  const res = await fetch(httpUrl(baseUrl, "v1/dev/token"), {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify({ user_id: userId }),
  });
  const body = (await readJson(res, what)) as { token?: unknown };
  if (typeof body?.token !== "string" || body.token === "") {
    throw new ConfabError("protocol", Code.INTERNAL, `${what}: no "token" in the answer`);
  }
  return body.token;
}
