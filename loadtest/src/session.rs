//! What every scenario shares: the common flags turned into a reachable
//! flashgate, the sale under test, this run's buyers and their tokens, and
//! the head of the report it ends with.

use std::fmt::Display;
use std::time::Duration;

use anyhow::Result;

use crate::cli::Common;
use crate::client::{short_id, Api, SaleView, TokenMinter};
use crate::report::{Check, Head, Params, Phase, Report, Tally};

/// One run of a scenario against one flashgate and one sale.
pub struct Session {
    pub api: Api,
    /// The sale under test (`--sale`, or a fresh `lt-<8 hex>`).
    pub sale: String,
    /// The per-request timeout (`--timeout-secs`).
    pub timeout: Duration,
    pub minter: TokenMinter,
    /// This run's id: buyer ids are `<sale>-<run>-<n>`, so two runs on one
    /// sale never share a buyer.
    run: String,
    quiet: bool,
}

/// Buyers of one run, their tokens minted before any request goes out.
pub struct Buyers {
    pub ids: Vec<String>,
    pub tokens: Vec<String>,
}

impl Session {
    /// Checks the flags every scenario needs and that flashgate answers.
    pub async fn open(common: &Common) -> Result<Self> {
        let secret = common.jwt_secret()?;
        let timeout = Duration::from_secs(common.timeout_secs);
        let api = Api::new(&common.url, common.admin_token.clone(), timeout)?;
        api.check_reachable().await?;
        Ok(Self {
            api,
            sale: common.sale.clone().unwrap_or_else(|| short_id("lt")),
            timeout,
            minter: TokenMinter::new(&secret),
            run: short_id("r"),
            quiet: common.json,
        })
    }

    /// The id of this run's buyer `n`.
    pub fn buyer_id(&self, n: impl Display) -> String {
        format!("{}-{}-{n}", self.sale, self.run)
    }

    /// Buyers `0..n` of this run.
    pub fn buyers(&self, n: usize) -> Result<Buyers> {
        let ids: Vec<String> = (0..n).map(|i| self.buyer_id(i)).collect();
        let tokens = ids
            .iter()
            .map(|id| self.minter.mint(id))
            .collect::<Result<_>>()?;
        Ok(Buyers { ids, tokens })
    }

    /// Configures the sale (`PUT`) and reads it back as buyers see it.
    pub async fn configure(
        &self,
        stock: i64,
        per_user_limit: u32,
        hold_ttl_secs: u32,
    ) -> Result<SaleView> {
        self.api
            .configure_sale(&self.sale, stock, per_user_limit, hold_ttl_secs)
            .await?;
        self.view().await
    }

    /// The sale as `GET /v1/sales/{id}` shows it now.
    pub async fn view(&self) -> Result<SaleView> {
        self.api.require_sale(&self.sale).await
    }

    /// Waits until the write-behind has written everything so far (at most
    /// `limit`), so that the next phase does not pay for the last one's
    /// writes; how long it took.
    pub async fn settle(&self, limit: Duration) -> Result<Duration> {
        let begun = std::time::Instant::now();
        while !self.api.write_behind_idle().await? {
            if begun.elapsed() > limit {
                anyhow::bail!("the write-behind did not catch up within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(begun.elapsed())
    }

    /// A progress note on stderr, unless the report goes out as JSON.
    pub fn note(&self, message: impl Display) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }

    /// This run's report: `tally` over `wall` is every measured request.
    pub fn report(
        &self,
        command: &str,
        params: Params,
        tally: &Tally,
        wall: Duration,
        phases: Vec<Phase>,
        checks: Vec<Check>,
    ) -> Report {
        Report::new(
            Head::new(command, self.api.base(), &self.sale, params),
            tally,
            wall,
            phases,
            checks,
        )
    }
}
