"""GLSL of the two programs: the face meshes (one multi-draw per batch) and the 2D overlays.

Coordinates. Every face is drawn into a *target*: one framebuffer holding the batch's
frames as tiles (:mod:`tddfa.render.layout`). The mesh shader gets the face's model-space
vertex ``m`` and normal as vertex attributes (planes of (F, 3, N) buffers; draw k of the
multi-draw has base vertex 3 k N and base instance k), maps it to the image with the face's model->image
affine ``T`` (``p = T[:, :3] m + T[:, 3]``, then ``p.z -= z shift``; tddfa.params), moves
it by its tile's offset and maps target pixels (x right, y down, centres at integers) to
clip space so that target row 0 is framebuffer row 0 (frames upload and read back in their
own row order, no flip). Where a pass has several tiles and a face reaches beyond its own,
four clip distances keep it inside (a variant of the program: they cost llvmpipe ~20 %).

The mesh fragment shader only stores the surface's straight colour and its weight over the
frame (``render_alpha`` for the blended modes, 1 otherwise) in an RGBA target cleared to 0;
a last full-rectangle pass blends every pixel once with the frame (COMPOSITE_*). Blending in
the mesh fragment shader instead costs llvmpipe a third of its time: its tiny triangles
shade whole 4x4 blocks, sixteen times the pixels.

Depth: ``z_ndc = -z / DEPTH_RANGE`` with image-space z (towards the camera), so a nearer
surface has a smaller depth for every face of every tile; z within +-65,536 px keeps
1/128 px of depth resolution in a 24-bit depth buffer.

Lighting is per vertex (Gouraud), as 3DDFA_V2's Sim3DR renderer: ambient + Lambert diffuse
+ specular from a light on the viewing axis, in the face's normalised frame (bounding box
centred, longest side 2). Normals are the model-space area-weighted normals mapped by the
cofactor matrix of T[:, :3] (exact for an affine map), turned to face the camera.

Per face (attributes of divisor 1, ``INSTANCE_FLOATS`` float32 each, see
:mod:`tddfa.render.instances`): the three rows of T, the lighting frame, (z shift, z extent,
mode, face index), (tile offset x, y, UV atlas origin x, y), the clip rectangle in target
pixels and the rectangle that bounds frame sampling (image pixels).
"""

from __future__ import annotations

from tddfa.render.modes import BLENDED_MODES, MODE_IDS

DEPTH_RANGE = 65536.0
INSTANCE_ATTRIBUTES = 8  # vec4 attributes per face instance
INSTANCE_FLOATS = 4 * INSTANCE_ATTRIBUTES
FIRST_INSTANCE_LOCATION = 6  # locations 0-5: the vertex's position and normal
OVERLAY_FLOATS = 11  # per overlay vertex: position 2, disc coordinate 2, colour 3, clip 4

_MODE_DEFINES = "\n".join(
    f"#define MODE_{name.upper()} {index}" for name, index in MODE_IDS.items()
)
_BLENDED = " || ".join(f"mode == MODE_{name.upper()}" for name in sorted(BLENDED_MODES))

MESH_VERTEX = f"""
#version 430 core
{_MODE_DEFINES}
uniform samplerBuffer u_ncc;        // (3, N) per-vertex PNCC colour, planar
uniform samplerBuffer u_uv;         // (2, N) per-vertex BFM texture coordinates, planar
uniform sampler2D u_background;     // the frames, as tiles of the target
uniform int u_vertices;             // N
uniform vec2 u_target;              // target size (width, height) in pixels
uniform vec2 u_background_size;
uniform vec2 u_texture_size;        // texture mode's image (width, height)
uniform float u_uv_size;            // S, side of a UV map
uniform vec4 u_light;               // ambient, diffuse, specular, specular exponent
uniform vec3 u_light_position;
uniform vec3 u_view_position;
uniform vec3 u_color;
uniform vec3 u_wire_color;
uniform float u_alpha;              // weight of the blended modes over the frame
// the face's model-space vertex and its area-weighted normal: planes of (F, 3, N) buffers,
// reached through the draw's base vertex 3 k N (face k)
layout(location = 0) in float a_x;
layout(location = 1) in float a_y;
layout(location = 2) in float a_z;
layout(location = 3) in float a_nx;
layout(location = 4) in float a_ny;
layout(location = 5) in float a_nz;
layout(location = 6) in vec4 i_row0;
layout(location = 7) in vec4 i_row1;
layout(location = 8) in vec4 i_row2;
layout(location = 9) in vec4 i_light;   // lighting frame: centre xyz, scale
layout(location = 10) in vec4 i_face;   // z shift, z extent, mode, face index
layout(location = 11) in vec4 i_offset; // image -> target offset xy, UV atlas origin xy
layout(location = 12) in vec4 i_clip;   // target rectangle x0, y0, x1, y1 (pixel edges)
layout(location = 13) in vec4 i_sample; // frame sampling bounds x0, y0, x1, y1 (image)
out vec4 v_rgba;  // colour and its weight over the frame; texture mode: (s, t, 0, weight)

vec2 uv_of_vertex() {{
    int local = gl_VertexID - int(i_face.w) * 3 * u_vertices;  // gl_VertexID has the base
    return vec2(texelFetch(u_uv, local).r, texelFetch(u_uv, local + u_vertices).r);
}}

vec3 ncc_of_vertex() {{
    int local = gl_VertexID - int(i_face.w) * 3 * u_vertices;
    return vec3(texelFetch(u_ncc, local).r, texelFetch(u_ncc, local + u_vertices).r,
                texelFetch(u_ncc, local + 2 * u_vertices).r);
}}

vec3 lit(vec3 p, vec3 n) {{
    vec3 position = (p - i_light.xyz) * i_light.w;
    vec3 l = normalize(u_light_position - position);
    float c = dot(n, l);
    float shade = u_light.x + u_light.y * max(c, 0.0);
    if (c > 0.0) {{
        vec3 v = normalize(u_view_position - position);
        vec3 r = 2.0 * c * n - l;
        shade += u_light.z * clamp(pow(max(dot(v, r), 0.0), u_light.w), 0.0, 1.0);
    }}
    return u_color * clamp(shade, 0.0, 1.0);
}}

void main() {{
    int mode = int(i_face.z);
    vec3 m = vec3(a_x, a_y, a_z);
    vec3 p = vec3(dot(i_row0.xyz, m) + i_row0.w,
                  dot(i_row1.xyz, m) + i_row1.w,
                  dot(i_row2.xyz, m) + i_row2.w - i_face.x);
    vec2 target = p.xy + i_offset.xy;
    float depth = -p.z / {DEPTH_RANGE:.1f};
    vec3 color;
    if (mode == MODE_UV) {{
        // 3DDFA_V2's uv_tex: the map pixel of (u, v) is (u (S-1), (1 - v) (S-1)); its colour
        // the frame at the vertex, bilinear; the first triangle drawn at a pixel wins
        vec2 uv = uv_of_vertex();
        target = i_offset.zw + vec2(uv.x, 1.0 - uv.y) * (u_uv_size - 1.0);
        depth = 0.0;
        vec2 at = clamp(p.xy, i_sample.xy, i_sample.zw) + i_offset.xy;
        color = textureLod(u_background, (at + 0.5) / u_background_size, 0.0).rgb;
    }} else if (mode == MODE_DEPTH) {{
        color = vec3(p.z / max(i_face.y, 1e-6));
    }} else if (mode == MODE_PNCC) {{
        color = ncc_of_vertex();
    }} else if (mode == MODE_WIREFRAME) {{
        color = u_wire_color;
    }} else if (mode == MODE_TEXTURE) {{
        vec2 uv = uv_of_vertex();
        vec2 texel = vec2(uv.x, 1.0 - uv.y) * (u_texture_size - 1.0) + 0.5;
        color = vec3(texel / u_texture_size, 0.0);
    }} else {{
        vec3 c0 = vec3(i_row0.x, i_row1.x, i_row2.x);
        vec3 c1 = vec3(i_row0.y, i_row1.y, i_row2.y);
        vec3 c2 = vec3(i_row0.z, i_row1.z, i_row2.z);
        vec3 n = mat3(cross(c1, c2), cross(c2, c0), cross(c0, c1)) * vec3(a_nx, a_ny, a_nz);
        float len = length(n);
        n = len > 0.0 ? n / len : vec3(0.0, 0.0, 1.0);
        if (n.z < 0.0) n = -n;  // two-sided: the winding of the mesh does not matter
        color = mode == MODE_NORMALS ? 0.5 * n + 0.5 : lit(p, n);
    }}
    v_rgba = vec4(color, ({_BLENDED}) ? u_alpha : 1.0);
    gl_Position = vec4(2.0 * (target + 0.5) / u_target - 1.0, depth, 1.0);
#ifdef CLIP_TO_TILES
    gl_ClipDistance[0] = target.x - i_clip.x;
    gl_ClipDistance[1] = i_clip.z - target.x;
    gl_ClipDistance[2] = target.y - i_clip.y;
    gl_ClipDistance[3] = i_clip.w - target.y;
#endif
}}
"""

# straight colour and its weight over the frame: tddfa.render.composite blends later
MESH_FRAGMENT = """
#version 430 core
in vec4 v_rgba;
out vec4 frag_color;
void main() {
    frag_color = v_rgba;
}
"""

# the texture mode's faces (their own draw): the texel at the interpolated coordinates
MESH_TEXTURE_FRAGMENT = """
#version 430 core
in vec4 v_rgba;
uniform sampler2D u_texture;
out vec4 frag_color;
void main() {
    frag_color = vec4(textureLod(u_texture, v_rgba.xy, 0.0).rgb, v_rgba.a);
}
"""


def with_tile_clipping(source: str) -> str:
    """The mesh vertex shader that clips each face to its tile (several tiles per pass)."""
    return source.replace("#version 430 core", "#version 430 core\n#define CLIP_TO_TILES", 1)


OVERLAY_VERTEX = """
#version 430 core
layout(location = 0) in vec2 a_position;  // target pixels
layout(location = 1) in vec2 a_disc;      // dots: position in the disc, in radii; lines: 0
layout(location = 2) in vec3 a_color;
layout(location = 3) in vec4 a_clip;      // target rectangle x0, y0, x1, y1 (pixel edges)
uniform vec2 u_target;
out vec2 v_disc;
out vec3 v_color;
void main() {
    v_disc = a_disc;
    v_color = a_color;
    gl_Position = vec4(2.0 * (a_position + 0.5) / u_target - 1.0, 0.0, 1.0);
    gl_ClipDistance[0] = a_position.x - a_clip.x;
    gl_ClipDistance[1] = a_clip.z - a_position.x;
    gl_ClipDistance[2] = a_position.y - a_clip.y;
    gl_ClipDistance[3] = a_clip.w - a_position.y;
}
"""

OVERLAY_FRAGMENT = """
#version 430 core
in vec2 v_disc;
in vec3 v_color;
out vec4 frag_color;
void main() {
    if (dot(v_disc, v_disc) > 1.0) discard;
    frag_color = vec4(v_color, 1.0);
}
"""

# The last step of a pass: each pixel of the frame tiles blended once with the nearest
# surface drawn there (colour and weight in ``u_drawn``; weight 0 where nothing was drawn).
COMPOSITE_VERTEX = """
#version 430 core
uniform vec4 u_rect;    // x, y, width, height in target pixels (edges)
uniform vec2 u_target;  // target size
void main() {
    vec2 corner = vec2(gl_VertexID & 1, gl_VertexID >> 1);
    gl_Position = vec4(2.0 * (u_rect.xy + corner * u_rect.zw) / u_target - 1.0, 0.0, 1.0);
}
"""

COMPOSITE_FRAGMENT = """
#version 430 core
uniform sampler2D u_drawn;
uniform sampler2D u_frames;
out vec4 frag_color;
void main() {
    ivec2 at = ivec2(gl_FragCoord.xy);
    vec4 drawn = texelFetch(u_drawn, at, 0);
    frag_color = vec4(mix(texelFetch(u_frames, at, 0).rgb, drawn.rgb, drawn.a), 1.0);
}
"""
