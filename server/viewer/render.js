// Drawing the points: WebGL (one draw call, positions and colour indices straight from the
// stream's typed arrays) or, where WebGL is missing, a 2D canvas written pixel by pixel through a
// Uint32Array over its ImageData. Both take the same camera and arrays.
"use strict";

// The camera maps world (x, z) to canvas pixels: px = (x - cx) * scale + w / 2.
export class Camera {
  constructor() { this.cx = 0; this.cz = 0; this.scale = 1; this.w = 1; this.h = 1; }
  toScreen(x, z) { return [(x - this.cx) * this.scale + this.w / 2, (z - this.cz) * this.scale + this.h / 2]; }
  toWorld(px, py) { return [(px - this.w / 2) / this.scale + this.cx, (py - this.h / 2) / this.scale + this.cz]; }
  visible() {
    const [x0, z0] = this.toWorld(0, 0);
    const [x1, z1] = this.toWorld(this.w, this.h);
    return { min: [x0, z0], max: [x1, z1] };
  }
}

// Colours as [r, g, b] 0..255; index 0 is "unknown".
export function parseHex(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

const VS = `
attribute float a_x;
attribute float a_z;
attribute vec3 a_rgb;
uniform vec2 u_centre;
uniform vec2 u_half; // canvas half size, pixels
uniform float u_scale;
uniform float u_size;
varying vec3 v_colour;
void main() {
  vec2 p = (vec2(a_x, a_z) - u_centre) * u_scale / u_half;
  gl_Position = vec4(p.x, -p.y, 0.0, 1.0);
  gl_PointSize = u_size;
  v_colour = a_rgb;
}`;

const FS = `
precision mediump float;
varying vec3 v_colour;
void main() { gl_FragColor = vec4(v_colour, 1.0); }`;

export class GlRenderer {
  constructor(canvas) {
    const gl = canvas.getContext("webgl", { antialias: false, alpha: true, premultipliedAlpha: false, preserveDrawingBuffer: true });
    if (!gl) throw new Error("no WebGL");
    this.kind = "webgl";
    this.gl = gl;
    this.canvas = canvas;
    const sh = (type, src) => {
      const s = gl.createShader(type);
      gl.shaderSource(s, src);
      gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    };
    const prog = gl.createProgram();
    gl.attachShader(prog, sh(gl.VERTEX_SHADER, VS));
    gl.attachShader(prog, sh(gl.FRAGMENT_SHADER, FS));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    this.prog = prog;
    this.loc = {
      x: gl.getAttribLocation(prog, "a_x"), z: gl.getAttribLocation(prog, "a_z"), rgb: gl.getAttribLocation(prog, "a_rgb"),
      centre: gl.getUniformLocation(prog, "u_centre"), half: gl.getUniformLocation(prog, "u_half"),
      scale: gl.getUniformLocation(prog, "u_scale"), size: gl.getUniformLocation(prog, "u_size"),
    };
    this.rgb = new Uint8Array(0);
    this.posBuf = gl.createBuffer();
    this.colBuf = gl.createBuffer();
    this.count = 0;
  }

  // Colours go to the GPU as RGB bytes per point (a palette lookup per vertex costs more than
  // these three bytes on a software rasteriser).
  upload(count, pos, colour, palette) {
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
    gl.bufferData(gl.ARRAY_BUFFER, pos.subarray(0, count * 3), gl.DYNAMIC_DRAW);
    if (this.rgb.length < count * 3) this.rgb = new Uint8Array(count * 3 * 2);
    const rgb = this.rgb, fallback = palette[0];
    for (let k = 0; k < count; k++) {
      const c = palette[colour[k]] || fallback;
      rgb[k * 3] = c[0]; rgb[k * 3 + 1] = c[1]; rgb[k * 3 + 2] = c[2];
    }
    gl.bindBuffer(gl.ARRAY_BUFFER, this.colBuf);
    gl.bufferData(gl.ARRAY_BUFFER, rgb.subarray(0, count * 3), gl.DYNAMIC_DRAW);
    this.count = count;
  }

  draw(cam, palette, size) {
    void palette; // baked into the colour buffer at upload
    const gl = this.gl, l = this.loc;
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.clearColor(0, 0, 0, 0);
    gl.clear(gl.COLOR_BUFFER_BIT);
    if (this.count === 0) return;
    gl.useProgram(this.prog);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
    gl.enableVertexAttribArray(l.x);
    gl.vertexAttribPointer(l.x, 1, gl.FLOAT, false, 12, 0);
    gl.enableVertexAttribArray(l.z);
    gl.vertexAttribPointer(l.z, 1, gl.FLOAT, false, 12, 8);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.colBuf);
    gl.enableVertexAttribArray(l.rgb);
    gl.vertexAttribPointer(l.rgb, 3, gl.UNSIGNED_BYTE, true, 3, 0);
    gl.uniform2f(l.centre, cam.cx, cam.cz);
    gl.uniform2f(l.half, cam.w / 2, cam.h / 2);
    gl.uniform1f(l.scale, cam.scale);
    gl.uniform1f(l.size, size);
    gl.drawArrays(gl.POINTS, 0, this.count);
  }
}

export class CanvasRenderer {
  constructor(canvas) {
    this.kind = "canvas";
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: true });
    this.count = 0;
    this.pos = new Float32Array(0);
    this.colour = new Uint8Array(0);
    this.image = null;
  }

  upload(count, pos, colour) {
    this.count = count; this.pos = pos; this.colour = colour;
  }

  draw(cam, palette, size) {
    const w = this.canvas.width, h = this.canvas.height;
    if (!this.image || this.image.width !== w || this.image.height !== h) {
      this.image = this.ctx.createImageData(w, h);
      this.px = new Uint32Array(this.image.data.buffer);
    }
    const px = this.px;
    px.fill(0);
    // Little-endian RGBA as one u32: 0xAABBGGRR.
    const pal = new Uint32Array(palette.length);
    for (let k = 0; k < palette.length; k++) {
      const [r, g, b] = palette[k];
      pal[k] = (0xff000000 | (b << 16) | (g << 8) | r) >>> 0;
    }
    const s = Math.max(1, Math.round(size));
    const half = (s / 2) | 0;
    const { cx, cz, scale } = cam;
    const ox = w / 2 - cx * scale - half, oz = h / 2 - cz * scale - half;
    const pos = this.pos, col = this.colour, n = this.count;
    for (let k = 0; k < n; k++) {
      const x = (pos[k * 3] * scale + ox) | 0;
      const y = (pos[k * 3 + 2] * scale + oz) | 0;
      if (x < 0 || y < 0 || x + s > w || y + s > h) continue;
      const c = pal[col[k]] || pal[0];
      let row = y * w + x;
      for (let dy = 0; dy < s; dy++, row += w) {
        for (let dx = 0; dx < s; dx++) px[row + dx] = c;
      }
    }
    this.ctx.putImageData(this.image, 0, 0);
  }
}
