"""The model assets: one table of files, their upstream URLs and sha256 digests.

Licences: 3DDFA_V2 / 3DDFA code and weights are MIT; everything derived from the Basel Face
Model is for academic, non-commercial use only.
"""

from __future__ import annotations

import dataclasses

V2_RAW = "https://raw.githubusercontent.com/cleardusk/3DDFA_V2/master/"
V1_RAW = "https://raw.githubusercontent.com/cleardusk/3DDFA/master/"


class AssetError(RuntimeError):
    """An asset is missing, unreadable or fails its checksum; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """One file: ``rel`` under the asset dir, its upstream ``url``, expected ``sha256``.

    ``sha256`` None means the file is not verified (not available to us when this table was
    written); ``optional`` files improve the result but the pipeline works without them.
    """

    rel: str
    url: str
    sha256: str | None
    optional: bool = False
    description: str = ""


ASSETS: dict[str, Asset] = {
    "FaceBoxesProd.pth": Asset(
        "3ddfa_v2/FaceBoxesProd.pth",
        V2_RAW + "FaceBoxes/weights/FaceBoxesProd.pth",
        "c0cb2b1e40710c0aa5fc32a8759b1496a0fe0a126c907ca0ffe35b4bd0709d09",
        description="FaceBoxes detector weights",
    ),
    "mb05_120x120.pth": Asset(
        "3ddfa_v2/mb05_120x120.pth",
        V2_RAW + "weights/mb05_120x120.pth",
        "f93ed7f1c4c0382b16d7c18480a5f67473c1917a47475a9823924f38aeb27280",
        description="MobileNetV1 x0.5 3DMM regressor",
    ),
    "mb1_120x120.pth": Asset(
        "3ddfa_v2/mb1_120x120.pth",
        V2_RAW + "weights/mb1_120x120.pth",
        None,
        optional=True,
        description="optional MobileNetV1 x1.0 3DMM regressor",
    ),
    "param_mean_std_62d_120x120.pkl": Asset(
        "3ddfa_v2/param_mean_std_62d_120x120.pkl",
        V2_RAW + "configs/param_mean_std_62d_120x120.pkl",
        "090d7150f77cb66c29ddae21e4508fbde59123dcd1dea7facc24a7ed06d1c795",
        description="regressor output mean/std (62,)",
    ),
    "tri.pkl": Asset(
        "3ddfa_v2/tri.pkl",
        V2_RAW + "configs/tri.pkl",
        "0562a594d8369f7d1c86306522ff76fd3a2c81cf90ba9443893c1191ad0abbb8",
        description="no-neck BFM triangles (3, 76073)",
    ),
    "indices.npy": Asset(
        "3ddfa_v2/indices.npy",
        V2_RAW + "configs/indices.npy",
        "b341debcdf26492332c1f96ced438e727e74164d1524cab9cca0aedf6ccd39c8",
        description="no-neck vertex indices into the full BFM",
    ),
    "ncc_code.npy": Asset(
        "3ddfa_v2/ncc_code.npy",
        V2_RAW + "configs/ncc_code.npy",
        "edab94fb09d2e25660d62eb068316becf8998e793dfe2ae3ac89196ebc0af981",
        description="normalised mean shape colour code (3, 38365)",
    ),
    "BFM_UV.mat": Asset(
        "3ddfa_v2/BFM_UV.mat",
        V2_RAW + "configs/BFM_UV.mat",
        "60be915f601563e274d9737abd54c6b925e8e737fa1c89d3cd64933315629ce1",
        description="BFM texture coordinates",
    ),
    "color.1024x1024.jpg": Asset(
        "ffmpeg_gpu_demo/color.1024x1024.jpg",
        "https://raw.githubusercontent.com/NVIDIA-AI-IOT/FFmpeg-GPU-Demo/master/ffmpeg-gpu/3ddfa/"
        "color.1024x1024.jpg",
        "f6363781b0fb985420932a818d442559443b3b3c74ae2f0e663bf8c6668b80a2",
        optional=True,
        description="optional face texture of the FFmpeg GPU demo (a vertical rainbow), the "
        "texture mode's default",
    ),
    "bfm_noneck_v3.pkl": Asset(
        "3ddfa_v2/bfm_noneck_v3.pkl",
        V2_RAW + "configs/bfm_noneck_v3.pkl",
        None,
        optional=True,
        description="optional exact dense BFM; without it an approximate one is built",
    ),
    "u_shp.npy": Asset(
        "3ddfa_v1/u_shp.npy",
        V1_RAW + "train.configs/u_shp.npy",
        "8a3b8b5ba3b0526ce3ddd3e287b26e0192c150e477767f374a6e333a365ff7dd",
        description="full BFM mean shape",
    ),
    "u_exp.npy": Asset(
        "3ddfa_v1/u_exp.npy",
        V1_RAW + "train.configs/u_exp.npy",
        "69049fb360bfff61090f7705ba510ed9bd817da871edbaa69e2fed7df624cf19",
        description="full BFM mean expression",
    ),
    "keypoints_sim.npy": Asset(
        "3ddfa_v1/keypoints_sim.npy",
        V1_RAW + "train.configs/keypoints_sim.npy",
        "065053f041b03ed32e36641d26fcd9aefef36f6c518899091cdc6038a6246c13",
        description="flat indices of the 68 landmarks",
    ),
    "w_shp_base.txt": Asset(
        "3ddfa_v1/w_shp_base.txt",
        V1_RAW + "c++/weights/w_shp_base.txt",
        "bec9a2189eb77c61ff940c801dcd9e5cd7f1973b6d91949494d9cd7ac121b7f6",
        description="exact shape basis at the 68 landmarks (204, 40)",
    ),
    "w_exp_base.txt": Asset(
        "3ddfa_v1/w_exp_base.txt",
        V1_RAW + "c++/weights/w_exp_base.txt",
        "4dc637c92c34bfd69faab74cafce23913f2b6181ff00c57a7ab69c1204d20b18",
        description="exact expression basis at the 68 landmarks (204, 10)",
    ),
    "Model_PAF.pkl": Asset(
        "3ddfa_v1/Model_PAF.pkl",
        V1_RAW + "train.configs/Model_PAF.pkl",
        "418713edd25e6c5938cb49e989ff8461d59a6c8bbe5aba3a643e9e77f9bc5e4d",
        description="64x64 grid of mean-face points and the shape basis there",
    ),
    "emma.jpg": Asset(
        "images/emma.jpg",
        V2_RAW + "examples/inputs/emma.jpg",
        "c85bf90c207c3ae5645dd6d47a7e7b35af9f43f2db16038e97e28b9b5cc42119",
        description="test photo, 3 faces",
    ),
    "trump_hillary.jpg": Asset(
        "images/trump_hillary.jpg",
        V2_RAW + "examples/inputs/trump_hillary.jpg",
        "5da6e8a9c246f3a82987f3a9f3ee0a034d798ae4215c7453337b6a82fc25a296",
        description="test photo, 2 faces",
    ),
    "JianzhuGuo.jpg": Asset(
        "images/JianzhuGuo.jpg",
        V2_RAW + "examples/inputs/JianzhuGuo.jpg",
        "258f2adac53c34bd2a2fa0399fbe6cf1ae93b84508fed4f7c84a646ef691df20",
        description="test photo, 1 face",
    ),
}
