// HTTP helpers: the optional access token (?token=... or saved), and plain-language errors.
const params = new URLSearchParams(location.search);
if (params.get("token")) sessionStorage.setItem("deepfake-token", params.get("token"));

export function authHeaders() {
  const token = sessionStorage.getItem("deepfake-token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export class ApiError extends Error {
  constructor(status, message, reason = null) {
    super(message);
    this.status = status;
    this.reason = reason; // the server's own words ({"error": ...}), when it gave any
  }
}

export const UNREACHABLE = "Cannot reach the detection server. Check that it is running and that this page's address is right.";

export async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch {
    throw new ApiError(0, UNREACHABLE);
  }
  let body = null;
  if (response.status === 204) return null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const reason = (body && body.error) || null;
    throw new ApiError(response.status, explain(response.status, reason), reason);
  }
  return body;
}

export function explain(status, reason) {
  if (status === 503) return `The server is busy: ${reason || "stream limit reached"}. Try again in a minute.`;
  if (status === 401 || status === 403) return "The server needs an access token. Open this page with ?token=YOUR_TOKEN.";
  if (status === 429) return "Too many attempts. Wait a few seconds and try again.";
  if (status === 413) return `The file is too large: ${reason || "over the server's limit"}.`;
  if (status === 0) return UNREACHABLE;
  return reason ? `The server refused the request: ${reason}.` : `The server answered with an error (${status}).`;
}
