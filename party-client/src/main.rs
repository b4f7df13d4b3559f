//! `shardlm-client`: the client party (P0). It owns the prompt, tokenizes, samples and
//! sees the output. Subcommands follow DESIGN.md section 6.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use shardlm_client::eval::{self, CaseResult};
use shardlm_client::text::{StreamDecoder, TextCodec};
use shardlm_configs::Variant;
use shardlm_protocols::model::generate::generate;
use shardlm_protocols::model::sampling::{argmax, Sampler, SamplingConfig};
use shardlm_protocols::model::{ModelDir, PlainEngine, Rows, Weights};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "shardlm-client", version, about = "ShardLM client party: private LLM inference where the GPU host never sees the prompt")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for a prompt, streaming tokens as they come.
    Generate(GenerateArgs),
    /// Run a variant over a cases file and write top-20 logits and greedy tokens per case.
    Eval(EvalArgs),
}

#[derive(Args)]
struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampling stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn config(&self) -> Result<SamplingConfig> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("--temperature must be a finite number >= 0 (0 is greedy), got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        Ok(SamplingConfig { temperature: self.temperature, top_p: self.top_p, seed: self.seed })
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// Run the plaintext engine in this process (no server, no privacy): the reference.
    #[arg(long)]
    local: bool,
    /// Hugging Face model directory.
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    model_dir: PathBuf,
    /// The prompt.
    #[arg(short, long)]
    prompt: String,
    /// Format the prompt as one user turn of the Qwen chat template.
    #[arg(long)]
    chat: bool,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print prefill time and decode throughput at the end.
    #[arg(long)]
    timing: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Which variant computes: `local` is the plaintext engine.
    #[arg(long, default_value = "local")]
    variant: Variant,
    /// Hugging Face model directory.
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    model_dir: PathBuf,
    /// Cases file (`{"cases": [{"input_ids": [...]}, ...]}`).
    #[arg(long)]
    cases: PathBuf,
    /// Where to write the results JSON.
    #[arg(long)]
    out: PathBuf,
    /// Greedy tokens per case.
    #[arg(long, default_value_t = 16)]
    greedy: usize,
    /// Compute logits at every position (for all-position argmax agreement).
    #[arg(long)]
    all_positions: bool,
}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => cmd_generate(a),
        Command::Eval(a) => cmd_eval(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load_local(model_dir: &Path) -> Result<(ModelDir, Arc<Weights>)> {
    let dir = ModelDir::open(model_dir)?;
    let weights = Arc::new(dir.load_weights()?);
    Ok((dir, weights))
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    if !a.local {
        bail!("only `--local` (the plaintext engine) is available in this build; private generation needs `-s HOST:PORT --variant v2`");
    }
    let sampling = a.sampling.config()?;
    let t_load = Instant::now();
    let (dir, weights) = load_local(&a.model_dir)?;
    let codec = TextCodec::load(&dir.tokenizer)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let prompt = codec.encode_prompt(&a.prompt, a.chat)?;
    let (backend, _) = shardlm_gpu::best_available();
    let mut engine = PlainEngine::new(weights.clone(), backend);
    engine.check_tokens(&prompt)?;
    let mut sampler = Sampler::new(sampling);
    let mut stream = StreamDecoder::new(&codec);
    let mut stdout = std::io::stdout();
    let mut stream_err = None;
    let g = generate(&mut engine, &dir.config, &prompt, a.max_tokens, &mut sampler, false, |t| {
        match stream.push(t) {
            Ok(s) => {
                let _ = stdout.write_all(s.as_bytes());
                let _ = stdout.flush();
            }
            Err(e) => stream_err = Some(e),
        }
    })?;
    println!();
    let _ = std::io::stdout().flush();
    if let Some(e) = stream_err {
        return Err(e);
    }
    if a.timing {
        eprintln!(
            "timing: load {:.2} s, prompt {} tokens, prefill {:.3} s, {} new tokens, decode {:.2} tokens/s",
            load_s,
            prompt.len(),
            g.prefill.as_secs_f64(),
            g.tokens.len(),
            g.decode_tokens_per_second()
        );
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    if a.variant != Variant::Local {
        bail!("variant `{}` is not available for eval in this build; use `--variant local`", a.variant);
    }
    let (dir, weights) = load_local(&a.model_dir)?;
    let cases = eval::read_cases(&a.cases, dir.config.vocab_size)?;
    let (backend, _) = shardlm_gpu::best_available();
    let mut engine = PlainEngine::new(weights, backend);
    let rows = if a.all_positions { Rows::All } else { Rows::Last };
    let mut results = Vec::with_capacity(cases.len());
    let t_all = Instant::now();
    for (i, case) in cases.iter().enumerate() {
        engine.reset();
        let t = Instant::now();
        let (logits, greedy) = eval::run_case(&mut engine, &dir.config, &case.input_ids, a.greedy, rows)
            .with_context(|| format!("case {i}"))?;
        let seconds = t.elapsed().as_secs_f64();
        let argmax_all = a.all_positions.then(|| (0..logits.rows()).map(|r| argmax(logits.row(r))).collect::<Vec<_>>());
        let (top20_ids, top20_logits) = eval::top20(logits.last());
        let vs_reference = eval::compare(case, logits.last(), argmax_all.as_deref(), &greedy);
        if let Some(c) = &vs_reference {
            eprintln!(
                "case {i}: max |logit diff| {:.2e}, top-1 {}, greedy {}{}",
                c.max_abs_logit_diff,
                if c.top1_equal { "equal" } else { "DIFFERS" },
                match c.greedy_equal { Some(true) => "equal", Some(false) => "DIFFERS", None => "n/a" },
                c.argmax_agree.map(|(a, n)| format!(", argmax {a}/{n} positions")).unwrap_or_default()
            );
        }
        results.push(CaseResult {
            prompt: case.prompt.clone(),
            input_tokens: case.input_ids.len(),
            top20_ids,
            top20_logits,
            argmax_all_positions: argmax_all,
            greedy,
            bytes_sent: 0,
            bytes_received: 0,
            rounds: 0,
            seconds,
            vs_reference,
        });
    }
    let out = serde_json::json!({
        "model": dir.config.name,
        "variant": a.variant.to_string(),
        "greedy_tokens": a.greedy,
        "seconds": t_all.elapsed().as_secs_f64(),
        "cases": results,
    });
    let text = serde_json::to_string_pretty(&out)?;
    std::fs::write(&a.out, text).with_context(|| format!("{}: cannot write results", a.out.display()))?;
    eprintln!("wrote {} cases to {}", results.len(), a.out.display());
    Ok(())
}
