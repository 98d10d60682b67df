//! The engine-free half of the vision path: image decoding, camera frame conversion, letterboxing into model
//! tensors, and the post-processing of detector and OCR outputs into a `Scene`.

pub mod deskew;
pub mod detections;
pub mod encoders;
pub mod image;
pub mod letterbox;
pub mod ocr_post;
pub mod pixels;
pub mod scene;

pub use encoders::{
    InputTensor, ObjectDetector, SceneClassifier, StageTimings, TextReader, VisionModels, VisionSession,
    TEXT_READ_BUDGET,
};
pub use scene::{Scene, SceneLabel};
