// One WebRTC session with the server: send a camera (or receive a registered camera's video),
// receive score messages on the "scores" data channel.
import { request } from "./api.js";

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
  const pc = new RTCPeerConnection({ iceServers: [] });
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
