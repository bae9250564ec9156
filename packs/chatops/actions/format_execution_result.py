# After StackStorm's chatops.format_execution_result (contrib/chatops/actions, Apache-2.0,
# https://github.com/StackStorm/st2), which reads the execution and its alias through st2client and renders
# the alias's `result` format (or the default template) itself. Squall's chat renders results in one place,
# so the action asks it (`action_service.format_result`): the message is what `chatops.post_result` posts.
from st2common.runners.base_action import Action

__all__ = ["FormatResultAction"]


class FormatResultAction(Action):
    def run(self, execution_id):
        if not execution_id:
            raise ValueError("Invalid execution_id provided.")
        return self.action_service.format_result(execution_id)
