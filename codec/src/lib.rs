#![doc = include_str!("../README.md")]

mod compress;
mod error;
mod frame;
mod range;
mod value;

pub use compress::{compress, decompress};
pub use error::{CodecError, FrameError};
pub use frame::{FRAME_HEADER_LEN, FrameHeader, checksum, read_frame, read_frame_header, write_frame};
pub use range::{OutOfRange, in_range};
pub use value::{decode, encode, encode_into};
