// The microphone's samples at the AudioContext's rate (often 48 kHz) → PCM16 at the live
// protocol's rate (16 kHz), posted to the page in 100 ms chunks with the chunk's level.
// Downsampling averages the input samples that fall within each output sample's span
// (a box filter: enough against aliasing for speech), so no sample is dropped or repeated
// across chunk boundaries.
"use strict";

class Pcm16Resampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const target = options.processorOptions.targetRate;
    this.step = sampleRate / target; // input samples per output sample
    this.next = this.step; // input position where the current output sample ends
    this.position = 0; // input samples seen
    this.sum = 0;
    this.count = 0;
    this.last = 0;
    this.size = Math.round(target / 10);
    this.chunk = new Int16Array(this.size);
    this.filled = 0;
    this.energy = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const samples = channels[0];
    for (let i = 0; i < samples.length; i++) {
      this.sum += samples[i];
      this.count += 1;
      this.position += 1;
      while (this.position >= this.next) {
        if (this.count > 0) {
          this.last = this.sum / this.count;
          this.sum = 0;
          this.count = 0;
        }
        this.emit(this.last);
        this.next += this.step;
      }
    }
    return true;
  }

  emit(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.energy += clipped * clipped;
    this.chunk[this.filled++] = clipped < 0 ? clipped * 32768 : clipped * 32767;
    if (this.filled === this.size) {
      const level = Math.min(1, Math.sqrt(this.energy / this.filled) * 4);
      const pcm = this.chunk.buffer;
      this.port.postMessage({ pcm, level }, [pcm]); // detaches this.chunk
      this.chunk = new Int16Array(this.size);
      this.filled = 0;
      this.energy = 0;
    }
  }
}

registerProcessor("pcm16-resampler", Pcm16Resampler);
