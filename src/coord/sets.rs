//! Sorted sets: shared per-key numbers (last-access times, reads in progress) that several
//! replicas add to and one reads whole. Each set is one Redis key, so every call is a single
//! command (also on a Cluster). What a member or a score means is the caller's business.

use super::{Coord, Result, PREFIX};

impl Coord {
    /// Set the score of each `(member, score)` in the sorted set `name` (one `ZADD`).
    pub(crate) async fn zadd(&self, name: &str, entries: &[(String, u64)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(format!("{PREFIX}{name}"));
        for (member, score) in entries {
            cmd.arg(*score).arg(member);
        }
        let _: i64 = self.query("zadd", &cmd).await?;
        Ok(())
    }

    /// Remove `members` from the sorted set `name` (one `ZREM`).
    pub(crate) async fn zrem(&self, name: &str, members: &[String]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(format!("{PREFIX}{name}")).arg(members);
        let _: i64 = self.query("zrem", &cmd).await?;
        Ok(())
    }

    /// Every member of the sorted set `name` whose score is at least `min`, with its score.
    pub(crate) async fn zrange_from(&self, name: &str, min: u64) -> Result<Vec<(String, u64)>> {
        let raw: Vec<(String, f64)> = self
            .query(
                "zrange",
                redis::cmd("ZRANGE")
                    .arg(format!("{PREFIX}{name}"))
                    .arg(min)
                    .arg("+inf")
                    .arg("BYSCORE")
                    .arg("WITHSCORES"),
            )
            .await?;
        Ok(raw.into_iter().map(|(m, s)| (m, s as u64)).collect())
    }

    /// Remove the members of the sorted set `name` whose score is below `below`.
    pub(crate) async fn zrem_below(&self, name: &str, below: u64) -> Result<()> {
        let _: i64 = self
            .query(
                "zrem",
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(format!("{PREFIX}{name}"))
                    .arg("-inf")
                    .arg(format!("({below}")),
            )
            .await?;
        Ok(())
    }
}
