// One WebRTC session with the server: send a camera (or receive a registered camera's video),
// receive score messages on the "scores" data channel.
import { request } from "./api.js";

// The server's settings for the page (GET /v1/config): ICE servers (STUN/TURN, with
// credentials) and analysis hints. Fetched once; an older server without it means no ICE servers.
let configPromise = null;

// The wait before reconnect attempt `retries` (1, 2, 4, 8, then 10 s), for the webcam and
// camera views alike.
export function reconnectDelay(retries) {
  return Math.min(10000, 500 * 2 ** Math.min(retries, 5));
}

export function serverConfig() {
  if (!configPromise) {
    configPromise = request("/v1/config").catch((err) => {
      configPromise = null; // ask again next time
      if (err.status === 404) return { ice_servers: [] };
      throw err;
    });
  }
  return configPromise;
}

// The camera constraints for the server's capture hints (`capture` in /v1/config): a modest size
// at a smooth preview rate. All are `ideal`: a camera that cannot do them still starts (the
// browser picks its nearest mode), and what is sent is capped by `capSender` anyway.
export function cameraConstraints(capture, deviceId = "") {
  const video = deviceId ? { deviceId: { exact: deviceId } } : {};
  if (capture && capture.width && capture.height) {
    video.width = { ideal: capture.width };
    video.height = { ideal: capture.height };
  }
  if (capture && capture.frame_rate) video.frameRate = { ideal: capture.frame_rate };
  return Object.keys(video).length ? video : true;
}

// What the sender's first encoding is capped at for a track of `settings` (its getSettings()):
// at most `max_fps` frames/s and `max_kbps` kbit/s (maxBitrate is in bit/s; 0 or absent: no
// cap), and scaled down to fit the capture size (either orientation) when the camera gave a
// larger picture. The preview keeps the camera's own rate and size.
export function senderCaps(settings, capture) {
  const caps = {};
  if (!capture) return caps;
  if (capture.max_fps) caps.maxFramerate = capture.max_fps;
  if (capture.max_kbps > 0) caps.maxBitrate = Math.round(capture.max_kbps * 1000);
  const w = (settings && settings.width) || 0;
  const h = (settings && settings.height) || 0;
  if (w && h && capture.width && capture.height) {
    const big = Math.max(capture.width, capture.height);
    const small = Math.min(capture.width, capture.height);
    const scale = Math.max(Math.max(w, h) / big, Math.min(w, h) / small);
    if (scale > 1.01) caps.scaleResolutionDownBy = Math.round(scale * 1000) / 1000;
  }
  return caps;
}

// Apply `senderCaps` to an RTCRtpSender (after its track is added). Returns the caps applied,
// or null when the browser refused them (the stream still runs, uncapped).
export async function capSender(sender, capture) {
  const caps = senderCaps(sender.track && sender.track.getSettings(), capture);
  if (!Object.keys(caps).length) return caps;
  try {
    const params = sender.getParameters();
    if (!params.encodings || !params.encodings.length) params.encodings = [{}];
    Object.assign(params.encodings[0], caps);
    await sender.setParameters(params);
    return caps;
  } catch (err) {
    console.warn("the browser refused the sender caps", caps, err);
    return null;
  }
}

function hasCandidate(sdp) {
  return /^a=candidate:/m.test(sdp || "");
}

export const NO_CANDIDATE =
  "The server offered no network address to connect to, so no video can reach it. " +
  "Its operator must set --ice-addresses (or a TURN server with --ice-servers).";

function iceComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000); // offer what we have
  });
}

export async function connect({ stream = null, camera = null, onMessage, onState, onTrack }) {
  const config = await serverConfig();
  const pc = new RTCPeerConnection({ iceServers: config.ice_servers || [] });
  const senders = [];
  if (stream) {
    for (const track of stream.getVideoTracks()) senders.push(pc.addTrack(track, stream));
    // Send only what the analysis needs: the server decodes every frame it receives.
    await Promise.all(senders.map((s) => capSender(s, config.capture)));
  } else {
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addEventListener("track", (e) => onTrack && onTrack(e.streams[0] || new MediaStream([e.track])));
  }
  const channel = pc.createDataChannel("scores");
  channel.addEventListener("message", (e) => {
    try {
      onMessage(JSON.parse(e.data));
    } catch (err) {
      console.warn("bad message", err);
    }
  });
  pc.addEventListener("connectionstatechange", () => onState && onState(pc.connectionState));
  await pc.setLocalDescription(await pc.createOffer());
  await iceComplete(pc);
  const body = { sdp: pc.localDescription.sdp, type: "offer" };
  if (camera) body.camera = camera;
  let answer;
  try {
    answer = await request("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (err) {
    pc.close();
    throw err;
  }
  if (!hasCandidate(answer.sdp)) {
    pc.close();
    const err = new Error(NO_CANDIDATE);
    err.status = 500;
    throw err;
  }
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  return {
    pc,
    answer,
    close() {
      try {
        if (channel.readyState === "open") channel.send(JSON.stringify({ type: "bye" }));
      } catch {}
      setTimeout(() => pc.close(), 50);
    },
  };
}
