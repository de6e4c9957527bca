//! Which LLM API a request calls, from its method and path.

/// The API shape of a call, from its method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `POST .../v1/chat/completions`
    OpenAiChat,
    /// `POST .../v1/completions`
    OpenAiCompletions,
    /// `POST .../v1/embeddings`
    OpenAiEmbeddings,
    /// `POST .../v1/responses`
    OpenAiResponses,
    /// `POST .../v1/messages`
    AnthropicMessages,
    /// `POST .../api/chat`
    OllamaChat,
    /// `POST .../api/generate`
    OllamaGenerate,
}

impl Api {
    /// `gen_ai.operation.name`.
    pub fn operation(self) -> &'static str {
        match self {
            Api::OpenAiChat | Api::AnthropicMessages | Api::OllamaChat | Api::OpenAiResponses => {
                "chat"
            }
            Api::OpenAiCompletions | Api::OllamaGenerate => "text_completion",
            Api::OpenAiEmbeddings => "embeddings",
        }
    }

    /// `gen_ai.provider.name` when nothing more specific is known: the API's own shape.
    pub fn default_provider(self) -> &'static str {
        match self {
            Api::AnthropicMessages => "anthropic",
            Api::OllamaChat | Api::OllamaGenerate => "ollama",
            _ => "openai",
        }
    }
}

/// The LLM API a request is a call of, if any. Only POSTs; the path may carry a prefix
/// (`/openai/v1/chat/completions` behind a gateway).
pub fn api_of(method: &str, path: &str) -> Option<Api> {
    if method != "POST" {
        return None;
    }
    let path = path.trim_end_matches('/');
    const SUFFIXES: [(&str, Api); 7] = [
        ("/v1/chat/completions", Api::OpenAiChat),
        ("/v1/completions", Api::OpenAiCompletions),
        ("/v1/embeddings", Api::OpenAiEmbeddings),
        ("/v1/responses", Api::OpenAiResponses),
        ("/v1/messages", Api::AnthropicMessages),
        ("/api/chat", Api::OllamaChat),
        ("/api/generate", Api::OllamaGenerate),
    ];
    SUFFIXES
        .iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map(|(_, api)| *api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apis_by_method_and_path() {
        assert_eq!(
            api_of("POST", "/v1/chat/completions"),
            Some(Api::OpenAiChat)
        );
        assert_eq!(
            api_of("POST", "/openai/deployments/x/v1/chat/completions/"),
            Some(Api::OpenAiChat)
        );
        assert_eq!(api_of("POST", "/v1/messages"), Some(Api::AnthropicMessages));
        assert_eq!(api_of("POST", "/api/generate"), Some(Api::OllamaGenerate));
        assert_eq!(api_of("GET", "/v1/chat/completions"), None);
        assert_eq!(api_of("POST", "/v1/chat"), None);
        assert_eq!(Api::OpenAiEmbeddings.operation(), "embeddings");
        assert_eq!(Api::OllamaChat.default_provider(), "ollama");
    }
}
