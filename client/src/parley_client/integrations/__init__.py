"""Adapters that make parley the session store of agent frameworks, each behind its own extra:
parley_client.integrations.adk (Google ADK), .openai_agents (OpenAI Agents SDK) and .langchain."""
