// One WebRTC session with the server: send a camera (or receive a registered camera's video),
// receive score messages on the "scores" data channel.
import { request } from "./api.js";

// The server's settings for the page (GET /v1/config): ICE servers (STUN/TURN, with
// credentials) and analysis hints. Fetched once; an older server without it means no ICE servers.
let configPromise = null;

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
  if (stream) {
    for (const track of stream.getVideoTracks()) pc.addTrack(track, stream);
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
