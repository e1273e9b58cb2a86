//! The gRPC contract (`proto/flotilla/v1`), generated at build time.

#![allow(clippy::all, missing_docs)]

/// `flotilla.v1`: messages and the agent and admin services.
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

#[cfg(test)]
mod tests {
    use super::v1::*;
    use prost::Message;

    #[test]
    fn session_messages_round_trip() {
        let msg = AgentMessage {
            body: Some(agent_message::Body::Result(JobResult {
                result_id: "r-1".into(),
                job_id: "j-1".into(),
                kind: JobKind::Backup as i32,
                state: JobState::Succeeded as i32,
                set: Some(BackupSet {
                    kind: "full".into(),
                    end_time: 1_700_000_000,
                    volumes: 3,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let bytes = msg.encode_to_vec();
        assert_eq!(AgentMessage::decode(bytes.as_slice()).unwrap(), msg);
        // Garbage is an error, never a panic.
        assert!(AgentMessage::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
