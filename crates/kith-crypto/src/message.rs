use std::fmt;

use kith_proto::v1 as proto;
use prost::Message;
use vodozemac::olm::OlmMessage;

use crate::{CryptoError, Curve25519Key};

/// The two kinds of Olm message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageType {
    /// Starts a session: carries the sender's identity and base keys and the fallback key it used.
    /// A sender keeps sending pre-key messages until it has received a reply on the session.
    PreKey,
    /// A message on an established session.
    Normal,
}

impl MessageType {
    /// The wire number: 0 for pre-key, 1 for normal (as in Olm and Matrix).
    pub fn to_wire(self) -> u32 {
        match self {
            MessageType::PreKey => 0,
            MessageType::Normal => 1,
        }
    }
}

/// One encrypted direct message: the Olm message plus the sender's identity key, so the receiver
/// can pick the session (or start one) without a lookup.
///
/// The identity key inside is only a hint; [`Olm::decrypt`](crate::Olm::decrypt) requires the
/// caller to name the key it expects from the sender's verified bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext {
    pub(crate) sender: Curve25519Key,
    pub(crate) message: OlmMessage,
}

impl Ciphertext {
    /// Largest encoded ciphertext accepted, equal to the `/kith/dm` frame cap.
    pub const MAX_LEN: usize = 256 * 1024;

    /// Whether this message starts a session.
    pub fn message_type(&self) -> MessageType {
        match self.message {
            OlmMessage::PreKey(_) => MessageType::PreKey,
            OlmMessage::Normal(_) => MessageType::Normal,
        }
    }

    /// The sender's Curve25519 identity key, as the message claims it.
    pub fn sender_identity_key(&self) -> Curve25519Key {
        self.sender
    }

    /// The Olm message in its binary form.
    pub fn body(&self) -> Vec<u8> {
        self.message.to_parts().1
    }

    /// Encodes as a `kith.v1.OlmMessage`.
    pub fn to_bytes(&self) -> Vec<u8> {
        proto::OlmMessage {
            r#type: self.message_type().to_wire(),
            body: self.body(),
            sender_identity_key: self.sender.to_bytes().to_vec(),
        }
        .encode_to_vec()
    }

    /// Decodes a `kith.v1.OlmMessage` and parses the Olm message inside.
    ///
    /// Fails with [`CryptoError::MessageTooLarge`] above [`Ciphertext::MAX_LEN`] and with
    /// [`CryptoError::MalformedMessage`] for anything that does not parse, including a pre-key
    /// message whose embedded identity key differs from the sender key next to it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() > Self::MAX_LEN {
            return Err(CryptoError::MessageTooLarge {
                len: bytes.len(),
                max: Self::MAX_LEN,
            });
        }
        let wire = proto::OlmMessage::decode(bytes).map_err(|e| malformed(e.to_string()))?;
        let sender = Curve25519Key::from_slice(&wire.sender_identity_key).ok_or_else(|| {
            malformed(format!(
                "sender identity key must be 32 bytes, got {}",
                wire.sender_identity_key.len()
            ))
        })?;
        let message_type = match wire.r#type {
            0 => 0,
            1 => 1,
            other => return Err(malformed(format!("unknown Olm message type {other}"))),
        };
        let message = OlmMessage::from_parts(message_type, &wire.body)
            .map_err(|e| malformed(format!("Olm message body: {e}")))?;
        if let OlmMessage::PreKey(pre_key) = &message
            && pre_key.identity_key() != sender.0
        {
            return Err(malformed(
                "pre-key message names another sender identity key than its envelope".to_owned(),
            ));
        }
        Ok(Self { sender, message })
    }
}

impl fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ciphertext")
            .field("type", &self.message_type())
            .field("sender", &self.sender)
            .field("body_len", &self.message.message().len())
            .finish()
    }
}

fn malformed(reason: String) -> CryptoError {
    CryptoError::MalformedMessage { reason }
}
